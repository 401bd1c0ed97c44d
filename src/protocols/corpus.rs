//! Conformance against the real-packet corpus (`protocols/<name>/corpus.jsonl`, packets from
//! Traccar's decoder tests, see each NOTICE). Used by the test suite and by
//! `fleetgate corpus-report`.
//!
//! Packets of one source test method are fed in order to one session, as the original test
//! did, so a login earlier in the method identifies the device for the packets after it.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::BytesMut;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;

use super::{DecodeCtx, Decoded, FrameCut, Protocol, Transport};

/// One line of a corpus file.
#[derive(Clone, Debug, Deserialize)]
pub struct Entry {
    pub protocol: String,
    pub test: String,
    #[serde(default)]
    pub decoder: Option<String>,
    #[serde(default)]
    pub transport: Option<String>,
    pub encoding: String,
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<String>,
    pub expect: String,
    #[serde(default)]
    pub frame: Option<String>,
    #[serde(default)]
    pub expected_fix: Option<ExpectedFix>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ExpectedFix {
    pub time: Option<String>,
    pub valid: Option<bool>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

/// The verdict on one packet.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub line: usize,
    pub test: String,
    pub expect: String,
    pub pass: bool,
    pub detail: String,
}

impl Entry {
    /// The bytes a device would have sent.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match self.encoding.as_str() {
            "hex" => hex::decode(self.payload.as_deref().unwrap_or("")).map_err(|e| e.to_string()),
            "text" => Ok(self.payload.clone().unwrap_or_default().into_bytes()),
            "http" => {
                let body = self.body.clone().unwrap_or_default();
                let mut req = format!(
                    "{} {} HTTP/1.1\r\nHost: localhost\r\n",
                    self.method.as_deref().unwrap_or("GET"),
                    self.uri.as_deref().unwrap_or("/")
                );
                for (k, v) in self.headers.iter().flatten() {
                    req.push_str(&format!("{k}: {v}\r\n"));
                }
                req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
                Ok(req.into_bytes())
            }
            other => Err(format!("unknown encoding {other}")),
        }
    }

    fn transport(&self) -> Transport {
        if self.transport.as_deref() == Some("udp") {
            Transport::Udp
        } else {
            Transport::Tcp
        }
    }
}

/// Parse a corpus file.
pub fn load(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Everything one packet produced: decoded frames, the cut frames, and the first error.
struct Fed {
    frames: Vec<Vec<u8>>,
    decoded: Vec<Decoded>,
    error: Option<String>,
}

fn feed(session: &mut dyn super::Session, bytes: &[u8], ctx: &DecodeCtx) -> Fed {
    let mut buf = BytesMut::from(bytes);
    let mut fed = Fed {
        frames: Vec::new(),
        decoded: Vec::new(),
        error: None,
    };
    while !buf.is_empty() {
        match session.next_frame(&buf) {
            Ok(FrameCut::NeedMore) => {
                if fed.frames.is_empty() {
                    fed.error = Some(format!("incomplete frame ({} bytes left)", buf.len()));
                }
                break;
            }
            Ok(FrameCut::Skip(n)) => {
                let _ = buf.split_to(n.clamp(1, buf.len()));
            }
            Ok(FrameCut::Frame(len)) => {
                let frame = buf.split_to(len.clamp(1, buf.len()));
                fed.frames.push(frame.to_vec());
                match session.decode(&frame, ctx) {
                    Ok(d) => fed.decoded.push(d),
                    Err(e) => {
                        fed.error.get_or_insert(e.to_string());
                    }
                }
            }
            Err(e) => {
                fed.error = Some(e.to_string());
                break;
            }
        }
    }
    fed
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

fn judge(entry: &Entry, fed: &Fed) -> (bool, String) {
    let positions: Vec<_> = fed
        .decoded
        .iter()
        .flat_map(|d| d.positions.iter())
        .collect();
    let anything = fed.decoded.iter().any(|d| {
        !d.positions.is_empty()
            || d.status.is_some()
            || d.command_response.is_some()
            || d.device.is_some()
    });
    let err = fed.error.clone().unwrap_or_default();
    match entry.expect.as_str() {
        "frame" => {
            let want = hex::decode(entry.frame.as_deref().unwrap_or("")).unwrap_or_default();
            match fed.frames.first() {
                Some(got) if *got == want => (true, String::new()),
                // Our frames keep the delimiters some frame decoders strip.
                Some(got) if got.len() <= want.len() + 4 && contains(got, &want) => {
                    (true, "frame with delimiters".into())
                }
                Some(got) => (
                    false,
                    format!("cut {} not {}", hex::encode(got), hex::encode(&want)),
                ),
                None => (false, format!("no frame cut {err}")),
            }
        }
        "position" | "positions" => {
            let answer = fed.decoded.iter().any(|d| d.command_response.is_some());
            if positions.is_empty() && answer && fed.error.is_none() {
                // Traccar stores a command answer as a position at the last known location; we
                // keep it as what it is. Counted as matching, and reported as such.
                return (true, EQUIVALENT_COMMAND.into());
            }
            if positions.is_empty() {
                return (false, format!("no position {err}"));
            }
            if entry.expect == "position" && positions.len() != 1 {
                return (
                    false,
                    format!("{} positions, expected one", positions.len()),
                );
            }
            if let Some(fix) = &entry.expected_fix {
                let p = positions[0];
                if let Some(t) = fix.time.as_deref().and_then(parse_time) {
                    if (p.fix_time - t).num_milliseconds().abs() >= 1000 {
                        return (false, format!("time {} expected {t}", p.fix_time));
                    }
                }
                if let Some(lat) = fix.lat {
                    if (p.lat - lat).abs() > 1e-5 {
                        return (false, format!("lat {} expected {lat}", p.lat));
                    }
                }
                if let Some(lon) = fix.lon {
                    if (p.lon - lon).abs() > 1e-5 {
                        return (false, format!("lon {} expected {lon}", p.lon));
                    }
                }
                if let Some(valid) = fix.valid {
                    if p.valid != valid {
                        return (false, format!("valid {} expected {valid}", p.valid));
                    }
                }
            }
            (true, String::new())
        }
        "null" => {
            if positions.is_empty() {
                (
                    true,
                    if err.is_empty() {
                        String::new()
                    } else {
                        format!("rejected: {err}")
                    },
                )
            } else {
                (
                    false,
                    format!("{} positions, expected none", positions.len()),
                )
            }
        }
        "attributes" | "attribute" | "not_null" => {
            if anything {
                (true, String::new())
            } else {
                (false, format!("nothing decoded {err}"))
            }
        }
        other => (false, format!("unknown expectation {other}")),
    }
}

/// The note on a "position" packet that decoded to a command answer instead.
pub const EQUIVALENT_COMMAND: &str =
    "command answer (Traccar reports it as a position at the last known location)";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Run every packet of `entries` through `protocol`'s decoder and judge each.
pub fn run(protocol: Protocol, entries: &[Entry]) -> Vec<Outcome> {
    let ctx = DecodeCtx::now();
    let mut out = Vec::with_capacity(entries.len());
    let mut session: Option<(String, Box<dyn super::Session>)> = None;
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("{}|{:?}|{:?}", entry.test, entry.decoder, entry.transport);
        if session.as_ref().map(|(k, _)| k != &key).unwrap_or(true) {
            session = Some((key, protocol.session(entry.transport())));
        }
        let (_, s) = session.as_mut().expect("set above");
        let (pass, detail) = match entry.bytes() {
            Ok(bytes) => {
                let fed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    feed(s.as_mut(), &bytes, &ctx)
                }));
                match fed {
                    Ok(fed) => judge(entry, &fed),
                    Err(_) => (false, "PANIC".to_string()),
                }
            }
            Err(e) => (false, e),
        };
        out.push(Outcome {
            line: i + 1,
            test: entry.test.clone(),
            expect: entry.expect.clone(),
            pass,
            detail,
        });
    }
    out
}

/// One protocol's result over its corpus.
#[derive(Clone, Debug)]
pub struct ProtocolReport {
    pub protocol: Protocol,
    pub total: usize,
    /// Decoded as the corpus expects (command answers included).
    pub passed: usize,
    /// Of `passed`: command answers counted as matching a "position" packet.
    pub command_answers: usize,
    /// Packets that did not decode as expected.
    pub failed: Vec<Outcome>,
    /// Misses we know of and have explained: line → reason (`<protocol>/corpus-misses.tsv`).
    pub known: std::collections::BTreeMap<usize, String>,
}

impl ProtocolReport {
    /// Failures not explained in the known-misses file.
    pub fn unexplained(&self) -> Vec<&Outcome> {
        self.failed
            .iter()
            .filter(|o| !self.known.contains_key(&o.line))
            .collect()
    }
    /// Explained misses that now pass: the file must be updated.
    pub fn stale(&self) -> Vec<usize> {
        self.known
            .keys()
            .copied()
            .filter(|l| !self.failed.iter().any(|o| o.line == *l))
            .collect()
    }
}

/// Read `<line>\t<reason>` lines; `#` starts a comment.
fn load_known(path: &Path) -> std::collections::BTreeMap<usize, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (n, reason) = l.split_once('\t')?;
            Some((n.trim().parse().ok()?, reason.trim().to_string()))
        })
        .collect()
}

/// Per-protocol results over a directory of `<protocol>/corpus.jsonl` files.
pub fn report(dir: &Path) -> Vec<ProtocolReport> {
    let mut rows = Vec::new();
    for &p in Protocol::ALL {
        let path = dir.join(p.name()).join("corpus.jsonl");
        let Ok(entries) = load(&path) else { continue };
        let outcomes = run(p, &entries);
        let passed = outcomes.iter().filter(|o| o.pass).count();
        let command_answers = outcomes
            .iter()
            .filter(|o| o.pass && o.detail == EQUIVALENT_COMMAND)
            .count();
        let failed = outcomes.into_iter().filter(|o| !o.pass).collect();
        let known = load_known(&dir.join(p.name()).join("corpus-misses.tsv"));
        rows.push(ProtocolReport {
            protocol: p,
            total: entries.len(),
            passed,
            command_answers,
            failed,
            known,
        });
    }
    rows
}
