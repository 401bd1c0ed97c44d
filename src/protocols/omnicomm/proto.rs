//! Just enough protobuf (proto2 wire format) for Omnicomm's records: varints, zigzag `sint`,
//! length-delimited and fixed fields skipped, and groups (start/end tags), which Omnicomm
//! uses for every block. Malformed input ends the parse; what was read so far is kept.

/// The fields of one message or group, in wire order.
#[derive(Debug, Default)]
pub struct Fields {
    items: Vec<(u32, Value)>,
}

#[derive(Debug)]
enum Value {
    Varint(u64),
    Group(Fields),
    Other,
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Nesting deeper than this is hostile input, not an Omnicomm record.
const MAX_DEPTH: usize = 8;

impl Fields {
    pub fn parse(b: &[u8]) -> Fields {
        let mut at = 0;
        Fields::parse_until(b, &mut at, None, 0)
    }

    fn parse_until(b: &[u8], at: &mut usize, end: Option<u32>, depth: usize) -> Fields {
        let mut f = Fields::default();
        while *at < b.len() {
            let Some(tag) = varint(b, at) else { break };
            let (field, wire) = ((tag >> 3) as u32, tag & 7);
            let value = match wire {
                0 => match varint(b, at) {
                    Some(v) => Value::Varint(v),
                    None => break,
                },
                1 | 5 => {
                    *at += if wire == 1 { 8 } else { 4 };
                    Value::Other
                }
                2 => {
                    let Some(n) = varint(b, at) else { break };
                    let Some(next) = usize::try_from(n).ok().and_then(|n| at.checked_add(n)) else {
                        break;
                    };
                    *at = next;
                    Value::Other
                }
                3 if depth < MAX_DEPTH => {
                    Value::Group(Fields::parse_until(b, at, Some(field), depth + 1))
                }
                4 if end == Some(field) => return f,
                _ => break,
            };
            if *at > b.len() {
                break;
            }
            f.items.push((field, value));
        }
        f
    }

    pub fn uint(&self, field: u32) -> Option<u64> {
        self.items.iter().find_map(|(n, v)| match v {
            Value::Varint(x) if *n == field => Some(*x),
            _ => None,
        })
    }

    /// A zigzag-encoded `sint32`/`sint64`.
    pub fn sint(&self, field: u32) -> Option<i64> {
        self.uint(field)
            .map(|z| ((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    pub fn group(&self, field: u32) -> Option<&Fields> {
        self.items.iter().find_map(|(n, v)| match v {
            Value::Group(g) if *n == field => Some(g),
            _ => None,
        })
    }
}

/// A message being written (device-side encoder).
#[derive(Default)]
pub struct Writer(Vec<u8>);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Writer {
    pub fn uint(&mut self, field: u32, v: u64) {
        put_varint(&mut self.0, u64::from(field) << 3);
        put_varint(&mut self.0, v);
    }

    pub fn sint(&mut self, field: u32, v: i64) {
        self.uint(field, ((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn group(&mut self, field: u32, inner: &Writer) {
        put_varint(&mut self.0, (u64::from(field) << 3) | 3);
        self.0.extend_from_slice(&inner.0);
        put_varint(&mut self.0, (u64::from(field) << 3) | 4);
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}
