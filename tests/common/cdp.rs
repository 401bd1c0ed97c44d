//! A headless Chromium driven over the DevTools protocol through `--remote-debugging-pipe`
//! (JSON messages ended by NUL on fds 3 and 4): no WebDriver, no extra crate. Enough to open
//! a page at a given window size, evaluate JavaScript in it (clicks, typing, reading the DOM),
//! collect console errors and uncaught exceptions, and take a screenshot.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Browser {
    child: Child,
    to: File,
    from: mpsc::Receiver<Value>,
    next: u64,
    session: Option<String>,
    /// Console errors, uncaught exceptions and error log entries seen so far.
    pub errors: Vec<String>,
}

/// A pipe whose two ends sit above fd 10 (so dup2 onto 3 and 4 in the child cannot clobber
/// one with the other), close-on-exec in the parent.
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: plain syscalls on fds this function owns.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0, "pipe2");
        let hi = |fd: RawFd| {
            let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
            assert!(h >= 10, "F_DUPFD_CLOEXEC");
            libc::close(fd);
            h
        };
        (hi(fds[0]), hi(fds[1]))
    }
}

impl Browser {
    /// Start Chromium headless with its own profile; no page yet (see [`Browser::open`]).
    pub fn launch(chromium: &Path, profile: &Path) -> Browser {
        let (to_read, to_write) = pipe(); // we write commands; chromium reads fd 3
        let (from_read, from_write) = pipe(); // chromium writes fd 4; we read
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(to_read, 3) < 0 || libc::dup2(from_write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        // SAFETY: these fds are ours; the child has its own copies.
        let (to, from_file) = unsafe {
            libc::close(to_read);
            libc::close(from_write);
            (File::from_raw_fd(to_write), File::from_raw_fd(from_read))
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(from_file);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to,
            from: rx,
            next: 0,
            session: None,
            errors: Vec::new(),
        }
    }

    fn note(&mut self, ev: &Value) {
        let p = &ev["params"];
        match ev["method"].as_str() {
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                let text: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| a["description"].to_string())
                    })
                    .collect();
                self.errors
                    .push(format!("console.error: {}", text.join(" ")));
            }
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                self.errors.push(format!(
                    "exception: {} {}",
                    d["text"], d["exception"]["description"]
                ));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!(
                    "log: {}",
                    p["entry"]["text"].as_str().unwrap_or("")
                ));
            }
            _ => {}
        }
    }

    /// Send one command (to the page's session once [`Browser::open`] attached) and wait for
    /// its answer; events that arrive meanwhile are noted.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            if !method.starts_with("Target.") {
                msg["sessionId"] = json!(s);
            }
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            self.note(&v);
        }
    }

    /// Open a page of `width`×`height` CSS pixels at `url`.
    pub fn open(&mut self, url: &str, width: u32, height: u32) {
        let t = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        self.session = Some(a["sessionId"].as_str().unwrap().to_string());
        self.call("Runtime.enable", json!({}));
        self.call("Log.enable", json!({}));
        self.call("Page.enable", json!({}));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluate an expression in the page (promises awaited); its value as JSON.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluate `expr` until it is truthy (`timeout` at most); its last value.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expr);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {expr}; last value {v}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as it is.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(r["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
    }
}

/// Standard base64 (the screenshot's encoding), without a crate for one call.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
