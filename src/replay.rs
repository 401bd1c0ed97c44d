//! `fleetgate replay FILE --to ADDR`: plays a JSONL capture of tracker traffic back at a
//! server. Each line is one frame a device sent:
//!
//! ```json
//! {"t_ms": 1500, "protocol": "teltonika", "hex": "000f3335…", "session": "car-1", "ack": "01"}
//! ```
//!
//! `t_ms` is the time of the frame in milliseconds (relative: only differences count),
//! `session` groups the frames of one TCP connection (one connection per distinct value, opened
//! at its first frame), `ack` is the hex the server must answer with, or `null` when no answer
//! is checked. Frames go out at their relative times (scaled by `speed`, or back to back with
//! `flat_out`); after a frame with an `ack` the session reads exactly that many bytes and
//! compares. See docs/replay.md.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One line of a capture.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CapturedFrame {
    pub t_ms: u64,
    pub protocol: String,
    pub hex: String,
    pub session: String,
    #[serde(default)]
    pub ack: Option<String>,
}

/// A frame ready to send: its line number (1-based) and bytes.
#[derive(Clone, Debug)]
struct Frame {
    line: usize,
    t_ms: u64,
    bytes: Vec<u8>,
    ack: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{file}:{line}: {reason}")]
    Parse {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{0}: no frames")]
    Empty(String),
    #[error("--to: no address for protocol {0:?} (give --to ADDR or --to {0}=ADDR)")]
    NoAddress(String),
}

/// Where and how fast to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// `ADDR` for every session, or `PROTOCOL=ADDR` pairs.
    pub to: Vec<String>,
    /// Time factor: 2.0 plays twice as fast as captured.
    pub speed: f64,
    /// Ignore the timestamps: every frame as soon as the previous one is answered.
    pub flat_out: bool,
    /// How long to wait for an expected ack.
    pub ack_timeout: Duration,
}

/// One ack that did not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub session: String,
    pub line: usize,
    pub expected: String,
    /// What came instead (hex), or why nothing did.
    pub got: String,
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    pub sessions: usize,
    pub frames_sent: usize,
    pub acks_checked: usize,
    pub acks_matched: usize,
    pub mismatches: Vec<Mismatch>,
    pub elapsed: Duration,
}

impl ReplayReport {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty() && self.acks_checked == self.acks_matched
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} sessions, {} frames sent in {:.2} s; acks: {} checked, {} matched, {} mismatched",
            self.sessions,
            self.frames_sent,
            self.elapsed.as_secs_f64(),
            self.acks_checked,
            self.acks_matched,
            self.mismatches.len()
        )?;
        for m in &self.mismatches {
            writeln!(
                f,
                "  line {} (session {}): expected {}, got {}",
                m.line, m.session, m.expected, m.got
            )?;
        }
        Ok(())
    }
}

/// Parse a capture; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Vec<CapturedFrame>, ReplayError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |reason: String| ReplayError::Parse {
            file: file.to_string(),
            line: line_no,
            reason,
        };
        let f: CapturedFrame = serde_json::from_str(trimmed).map_err(|e| err(e.to_string()))?;
        hex::decode(&f.hex).map_err(|e| err(format!("hex: {e}")))?;
        if let Some(a) = &f.ack {
            hex::decode(a).map_err(|e| err(format!("ack: {e}")))?;
        }
        out.push(f);
    }
    if out.is_empty() {
        return Err(ReplayError::Empty(file.to_string()));
    }
    Ok(out)
}

fn address<'a>(to: &'a [String], protocol: &str) -> Option<&'a str> {
    to.iter()
        .find_map(|t| {
            t.split_once('=')
                .filter(|(p, _)| *p == protocol)
                .map(|(_, a)| a)
        })
        .or_else(|| to.iter().find(|t| !t.contains('=')).map(String::as_str))
}

/// Replay `frames` (from [`parse`]) against the server.
pub async fn run(
    frames: Vec<CapturedFrame>,
    opts: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let t_first = frames.iter().map(|f| f.t_ms).min().unwrap_or(0);
    let mut sessions: BTreeMap<String, (String, Vec<Frame>)> = BTreeMap::new();
    for (i, f) in frames.into_iter().enumerate() {
        let addr = address(&opts.to, &f.protocol)
            .ok_or_else(|| ReplayError::NoAddress(f.protocol.clone()))?
            .to_string();
        let frame = Frame {
            line: i + 1,
            t_ms: f.t_ms - t_first,
            bytes: hex::decode(&f.hex).unwrap_or_default(),
            ack: f.ack.as_deref().map(|a| hex::decode(a).unwrap_or_default()),
        };
        sessions
            .entry(f.session)
            .or_insert_with(|| (addr, Vec::new()))
            .1
            .push(frame);
    }
    let started = Instant::now();
    let mut report = ReplayReport {
        sessions: sessions.len(),
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for (name, (addr, frames)) in sessions {
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            session(name, addr, frames, &opts, started).await
        }));
    }
    for t in tasks {
        if let Ok(r) = t.await {
            report.frames_sent += r.frames_sent;
            report.acks_checked += r.acks_checked;
            report.acks_matched += r.acks_matched;
            report.mismatches.extend(r.mismatches);
        }
    }
    report.mismatches.sort_by_key(|m| m.line);
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn session(
    name: String,
    addr: String,
    frames: Vec<Frame>,
    opts: &ReplayOptions,
    started: Instant,
) -> ReplayReport {
    let mut r = ReplayReport::default();
    let mismatch = |line: usize, expected: &[u8], got: String| Mismatch {
        session: name.clone(),
        line,
        expected: hex::encode(expected),
        got,
    };
    let mut stream: Option<TcpStream> = None;
    for f in frames {
        if !opts.flat_out {
            let at = Duration::from_secs_f64(f.t_ms as f64 / 1000.0 / opts.speed.max(1e-6));
            tokio::time::sleep_until(started + at).await;
        }
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(&addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream.insert(s)
                }
                Err(e) => {
                    if let Some(a) = &f.ack {
                        r.acks_checked += 1;
                        r.mismatches.push(mismatch(
                            f.line,
                            a,
                            format!("cannot connect to {addr}: {e}"),
                        ));
                    }
                    continue;
                }
            },
        };
        if let Err(e) = s.write_all(&f.bytes).await {
            if let Some(a) = &f.ack {
                r.acks_checked += 1;
                r.mismatches
                    .push(mismatch(f.line, a, format!("write failed: {e}")));
            }
            stream = None;
            continue;
        }
        r.frames_sent += 1;
        let Some(ack) = f.ack else { continue };
        r.acks_checked += 1;
        let mut got = vec![0u8; ack.len()];
        match tokio::time::timeout(opts.ack_timeout, s.read_exact(&mut got)).await {
            Ok(Ok(_)) if got == ack => r.acks_matched += 1,
            Ok(Ok(_)) => r.mismatches.push(mismatch(f.line, &ack, hex::encode(&got))),
            Ok(Err(e)) => {
                r.mismatches
                    .push(mismatch(f.line, &ack, format!("connection ended: {e}")));
                stream = None;
            }
            Err(_) => {
                r.mismatches.push(mismatch(
                    f.line,
                    &ack,
                    format!("nothing within {:?}", opts.ack_timeout),
                ));
                // The late answer would be read as the next frame's: start afresh.
                stream = None;
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_parses_and_names_the_bad_line() {
        let ok = r#"{"t_ms": 0, "protocol": "teltonika", "hex": "0001", "session": "a", "ack": "01"}
# a comment
{"t_ms": 10, "protocol": "teltonika", "hex": "02", "session": "a", "ack": null}"#;
        let f = parse("x.jsonl", ok).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].ack, None);
        let bad = "{\"t_ms\": 0, \"protocol\": \"t\", \"hex\": \"zz\", \"session\": \"a\"}";
        let e = parse("x.jsonl", bad).unwrap_err().to_string();
        assert!(e.starts_with("x.jsonl:1: hex"), "{e}");
        assert!(parse("y", "\n").is_err());
    }

    #[test]
    fn addresses_resolve_per_protocol_then_default() {
        let to = vec!["gt06=h:1".to_string(), "h:2".to_string()];
        assert_eq!(address(&to, "gt06"), Some("h:1"));
        assert_eq!(address(&to, "teltonika"), Some("h:2"));
        assert_eq!(address(&to[..1], "teltonika"), None);
    }
}
