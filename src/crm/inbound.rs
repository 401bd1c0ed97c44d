//! Inbound CRM webhooks, the pure part: what amoCRM's and Bitrix24's own webhook bodies say
//! (`application/x-www-form-urlencoded`, bracketed keys), what fleetgate does about it, and
//! which deliveries it has already seen. The HTTP handler (`api`) answers at once and hands the
//! notices to the I/O side, which looks the vehicle up and acts.
//!
//! amoCRM (account webhooks and the Digital Pipeline "webhook" action) sends
//! `leads[status][0][id]=…&leads[status][0][status_id]=…&leads[status][0][pipeline_id]=…&
//! leads[status][0][old_status_id]=…&account[subdomain]=…`; lead updates as
//! `leads[update][0][id]=…&leads[update][0][custom_fields][0][id]=…&
//! leads[update][0][custom_fields][0][values][0][value]=…`; new leads as `leads[add][…]`. It
//! cannot set an `Authorization` header, so it is authenticated by a secret in the URL path.
//!
//! Bitrix24 (outbound webhooks / event handlers `ONCRMDEALUPDATE`, `ONCRMDEALADD`,
//! `ONCRMCOMPANYUPDATE`) sends `event=ONCRMDEALUPDATE&data[FIELDS][ID]=…&ts=…&
//! auth[application_token]=…` and nothing else about the deal: the receiver reads it back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::config::Stage;

/// The block reason a CRM stage sets (distinct from the API's `manual`, so the CRM lifts only
/// its own block).
pub const REASON_CRM_MANUAL: &str = "crm_manual";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InboundError {
    #[error("not a form body: {0}")]
    Form(String),
    #[error("no event in the body")]
    Empty,
}

/// A form body as a tree: `a[b][0][c]=v` → `a → b → 0 → c = v`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Form {
    pub value: Option<String>,
    pub children: BTreeMap<String, Form>,
}

impl Form {
    pub fn parse(body: &[u8]) -> Result<Form, InboundError> {
        if std::str::from_utf8(body).is_err() {
            return Err(InboundError::Form("not UTF-8".into()));
        }
        let mut root = Form::default();
        for (k, v) in form_urlencoded::parse(body) {
            let path = key_path(&k).ok_or_else(|| InboundError::Form(format!("bad key {k:?}")))?;
            let mut node = &mut root;
            for p in path {
                node = node.children.entry(p).or_default();
            }
            node.value = Some(v.into_owned());
        }
        Ok(root)
    }

    pub fn get(&self, path: &[&str]) -> Option<&Form> {
        let mut n = self;
        for p in path {
            n = n.children.get(*p)?;
        }
        Some(n)
    }

    pub fn text(&self, path: &[&str]) -> Option<&str> {
        self.get(path)?.value.as_deref().map(str::trim)
    }

    pub fn number(&self, path: &[&str]) -> Option<u64> {
        self.text(path)?.parse().ok()
    }

    /// Children in index order (`0`, `1`, … `10`), for the CRMs' numbered lists.
    pub fn items(&self) -> Vec<&Form> {
        let mut v: Vec<(u64, &Form)> = self
            .children
            .iter()
            .filter_map(|(k, f)| k.parse().ok().map(|i| (i, f)))
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, f)| f).collect()
    }
}

/// `leads[status][0][id]` → `["leads", "status", "0", "id"]`.
fn key_path(k: &str) -> Option<Vec<String>> {
    let (head, mut rest) = match k.find('[') {
        Some(i) => (&k[..i], &k[i..]),
        None => (k, ""),
    };
    if head.is_empty() {
        return None;
    }
    let mut out = vec![head.to_string()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        out.push(inner[..end].to_string());
        rest = &inner[end + 1..];
    }
    (out.len() <= 8).then_some(out)
}

/// Who in the CRM did it, for the audit: `amocrm:user:123`, or the CRM's name alone.
pub fn actor(crm: &str, user: Option<&str>) -> String {
    match user.filter(|u| !u.is_empty() && *u != "0") {
        Some(u) => format!("{crm}:user:{u}"),
        None => crm.to_string(),
    }
}

/// One thing a CRM said about a deal (or a company card).
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// amoCRM: a lead is now in this status (status change, Digital Pipeline, new lead).
    LeadStatus {
        lead_id: String,
        pipeline_id: u64,
        status_id: u64,
        old_status_id: Option<u64>,
        user: Option<String>,
    },
    /// amoCRM: a lead's fields changed; `(field id, first value)`.
    LeadFields {
        lead_id: String,
        fields: Vec<(u64, String)>,
        updated_at: Option<i64>,
        user: Option<String>,
    },
    /// amoCRM: a company card changed.
    CompanyFields {
        company_id: String,
        fields: Vec<(u64, String)>,
        user: Option<String>,
    },
    /// Bitrix24: a deal was added or changed; read it back.
    BitrixDeal { deal_id: String },
    /// Bitrix24: a company was changed.
    BitrixCompany { company_id: String },
}

fn custom_fields(f: &Form) -> Vec<(u64, String)> {
    let Some(cf) = f.get(&["custom_fields"]) else {
        return Vec::new();
    };
    cf.items()
        .into_iter()
        .filter_map(|c| {
            let id = c.number(&["id"])?;
            let v = c
                .text(&["values", "0", "value"])
                .or_else(|| c.text(&["values", "0"]))
                .unwrap_or_default();
            Some((id, v.to_string()))
        })
        .collect()
}

/// The notices in an amoCRM webhook body.
pub fn parse_amocrm(form: &Form) -> Vec<Notice> {
    let mut out = Vec::new();
    for kind in ["status", "add"] {
        for l in form
            .get(&["leads", kind])
            .map(Form::items)
            .unwrap_or_default()
        {
            let (Some(id), Some(status_id)) = (l.text(&["id"]), l.number(&["status_id"])) else {
                continue;
            };
            out.push(Notice::LeadStatus {
                lead_id: id.to_string(),
                pipeline_id: l.number(&["pipeline_id"]).unwrap_or(0),
                status_id,
                old_status_id: l.number(&["old_status_id"]),
                user: l
                    .text(&["modified_user_id"])
                    .or_else(|| l.text(&["responsible_user_id"]))
                    .map(str::to_string),
            });
        }
    }
    for l in form
        .get(&["leads", "update"])
        .map(Form::items)
        .unwrap_or_default()
    {
        let Some(id) = l.text(&["id"]) else { continue };
        out.push(Notice::LeadFields {
            lead_id: id.to_string(),
            fields: custom_fields(l),
            updated_at: l.text(&["updated_at"]).and_then(|t| t.parse().ok()),
            user: l.text(&["modified_user_id"]).map(str::to_string),
        });
    }
    for c in form
        .get(&["companies", "update"])
        .or_else(|| {
            form.get(&["contacts", "update"]).filter(|c| {
                c.items()
                    .iter()
                    .any(|i| i.text(&["type"]) == Some("company"))
            })
        })
        .map(Form::items)
        .unwrap_or_default()
    {
        let Some(id) = c.text(&["id"]) else { continue };
        out.push(Notice::CompanyFields {
            company_id: id.to_string(),
            fields: custom_fields(c),
            user: c.text(&["modified_user_id"]).map(str::to_string),
        });
    }
    out
}

/// A Bitrix24 event: its name, its `auth[application_token]`, and the notice.
#[derive(Clone, Debug, PartialEq)]
pub struct BitrixEvent {
    pub event: String,
    pub application_token: Option<String>,
    pub notice: Option<Notice>,
}

pub fn parse_bitrix(form: &Form) -> Result<BitrixEvent, InboundError> {
    let event = form
        .text(&["event"])
        .ok_or(InboundError::Empty)?
        .to_ascii_uppercase();
    let id = form.text(&["data", "FIELDS", "ID"]).map(str::to_string);
    let notice = match (event.as_str(), id) {
        ("ONCRMDEALUPDATE" | "ONCRMDEALADD", Some(deal_id)) => Some(Notice::BitrixDeal { deal_id }),
        ("ONCRMCOMPANYUPDATE" | "ONCRMCOMPANYADD", Some(company_id)) => {
            Some(Notice::BitrixCompany { company_id })
        }
        _ => None,
    };
    Ok(BitrixEvent {
        event,
        application_token: form
            .text(&["auth", "application_token"])
            .map(str::to_string),
        notice,
    })
}

/// `[crm.inbound.stages]`: deal stages that act on the car.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InboundStages {
    /// A deal moved here blocks the car (reason `crm_manual`); moved anywhere else, the CRM's
    /// block is lifted.
    pub block: Stage,
    /// A deal moved here lifts the CRM's block (explicitly; leaving `block` does too).
    pub unblock: Stage,
    /// "Возврат" / "Хочет сдать": the driver's return request.
    #[serde(rename = "return")]
    pub return_: Stage,
    /// The car is issued to the deal's driver: vehicle status `issued`.
    pub issued: Stage,
}

/// What to do to a car.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Block,
    Unblock,
    Return,
    Issued,
    Balance { rub: f64, as_of: Option<i64> },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Unblock => "unblock",
            Action::Return => "return",
            Action::Issued => "issued",
            Action::Balance { .. } => "balance",
        }
    }
}

/// Where a deal is now, in either CRM's terms.
#[derive(Clone, Debug, PartialEq)]
pub enum StageNow<'a> {
    Amo { pipeline_id: u64, status_id: u64 },
    Bitrix(&'a str),
}

fn is(stage: &Stage, now: &StageNow) -> bool {
    match now {
        StageNow::Amo {
            pipeline_id,
            status_id,
        } => {
            stage.status_id != 0
                && stage.status_id == *status_id
                && (stage.pipeline_id == 0 || stage.pipeline_id == *pipeline_id)
        }
        StageNow::Bitrix(id) => !stage.stage_id.is_empty() && stage.stage_id == *id,
    }
}

/// The actions a deal's stage calls for. `crm_block_standing`: the car carries the CRM's own
/// block now, so a deal anywhere but the block stage lifts it ("and back → unblock").
pub fn stage_actions(
    stages: &InboundStages,
    now: &StageNow,
    crm_block_standing: bool,
) -> Vec<Action> {
    let mut out = Vec::new();
    if is(&stages.block, now) {
        out.push(Action::Block);
    } else if is(&stages.unblock, now) || crm_block_standing {
        out.push(Action::Unblock);
    }
    if is(&stages.return_, now) {
        out.push(Action::Return);
    }
    if is(&stages.issued, now) {
        out.push(Action::Issued);
    }
    out
}

/// Deliveries already acted on, by the SHA-256 of the body, for `ttl` (a CRM that retries a
/// webhook it thinks failed sends the same body again: it acts once).
pub struct Seen {
    ttl: Duration,
    cap: usize,
    at: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl Seen {
    pub fn new(ttl: Duration, cap: usize) -> Seen {
        Seen {
            ttl,
            cap: cap.max(1),
            at: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// True the first time `body` is offered within `ttl`.
    pub fn first(&mut self, scope: &str, body: &[u8], now: Instant) -> bool {
        while let Some((k, t)) = self.order.front().copied() {
            if now.duration_since(t) < self.ttl && self.order.len() < self.cap {
                break;
            }
            self.order.pop_front();
            if self.at.get(&k) == Some(&t) {
                self.at.remove(&k);
            }
        }
        let mut h = Sha256::new();
        h.update(scope.as_bytes());
        h.update([0]);
        h.update(body);
        let key: [u8; 32] = h.finalize().into();
        if self.at.contains_key(&key) {
            return false;
        }
        self.at.insert(key, now);
        self.order.push_back((key, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMO_STATUS: &str = "leads%5Bstatus%5D%5B0%5D%5Bid%5D=8100&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142005\
        &leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=7001&leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=142001\
        &leads%5Bstatus%5D%5B0%5D%5Bmodified_user_id%5D=555&account%5Bid%5D=29000000&account%5Bsubdomain%5D=taxipark";

    #[test]
    fn an_amocrm_status_change_is_read_from_its_form_body() {
        let f = Form::parse(AMO_STATUS.as_bytes()).unwrap();
        assert_eq!(f.text(&["account", "subdomain"]), Some("taxipark"));
        assert_eq!(
            parse_amocrm(&f),
            vec![Notice::LeadStatus {
                lead_id: "8100".into(),
                pipeline_id: 7001,
                status_id: 142005,
                old_status_id: Some(142001),
                user: Some("555".into()),
            }]
        );
    }

    #[test]
    fn an_amocrm_lead_update_carries_its_custom_fields() {
        let body = "leads[update][0][id]=8100&leads[update][0][updated_at]=1796630000\
            &leads[update][0][custom_fields][0][id]=504&leads[update][0][custom_fields][0][name]=%D0%91%D0%B0%D0%BB%D0%B0%D0%BD%D1%81\
            &leads[update][0][custom_fields][0][values][0][value]=9+000%2C00\
            &leads[update][0][custom_fields][1][id]=505&leads[update][0][custom_fields][1][values][0]=x\
            &leads[update][1][id]=8200";
        let f = Form::parse(body.as_bytes()).unwrap();
        assert_eq!(
            parse_amocrm(&f),
            vec![
                Notice::LeadFields {
                    lead_id: "8100".into(),
                    fields: vec![(504, "9 000,00".into()), (505, "x".into())],
                    updated_at: Some(1_796_630_000),
                    user: None,
                },
                Notice::LeadFields {
                    lead_id: "8200".into(),
                    fields: vec![],
                    updated_at: None,
                    user: None,
                }
            ]
        );
    }

    #[test]
    fn list_items_keep_numeric_order_past_nine() {
        let body: String = (0..12)
            .map(|i| format!("leads[status][{i}][id]={i}&leads[status][{i}][status_id]=1&"))
            .collect();
        let f = Form::parse(body.as_bytes()).unwrap();
        let ids: Vec<String> = parse_amocrm(&f)
            .into_iter()
            .map(|n| match n {
                Notice::LeadStatus { lead_id, .. } => lead_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, (0..12).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn a_bitrix24_event_names_the_deal_and_carries_the_application_token() {
        let body = "event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=9100&ts=1796630000\
            &auth%5Bdomain%5D=taxipark.bitrix24.ru&auth%5Bclient_endpoint%5D=https%3A%2F%2Ftaxipark.bitrix24.ru%2Frest%2F\
            &auth%5Bmember_id%5D=abc&auth%5Bapplication_token%5D=tok123";
        let e = parse_bitrix(&Form::parse(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(e.event, "ONCRMDEALUPDATE");
        assert_eq!(e.application_token.as_deref(), Some("tok123"));
        assert_eq!(
            e.notice,
            Some(Notice::BitrixDeal {
                deal_id: "9100".into()
            })
        );
        let other =
            parse_bitrix(&Form::parse(b"event=ONCRMLEADADD&data[FIELDS][ID]=1").unwrap()).unwrap();
        assert_eq!(other.notice, None, "events fleetgate does not act on");
        assert_eq!(
            parse_bitrix(&Form::parse(b"foo=bar").unwrap()),
            Err(InboundError::Empty)
        );
    }

    #[test]
    fn bad_bodies_are_refused_not_guessed() {
        assert!(Form::parse(b"a[b=1").is_err());
        assert!(Form::parse(b"[x]=1").is_err());
        assert!(Form::parse(&[0xff, 0xfe]).is_err());
        assert!(Form::parse(b"a[1][2][3][4][5][6][7][8]=deep").is_err());
        assert_eq!(
            parse_amocrm(&Form::parse(b"leads[status][0][id]=1").unwrap()),
            vec![]
        );
    }

    fn stages() -> InboundStages {
        InboundStages {
            block: Stage {
                pipeline_id: 7001,
                status_id: 142005,
                ..Stage::default()
            },
            unblock: Stage::default(),
            return_: Stage {
                pipeline_id: 7001,
                status_id: 142002,
                ..Stage::default()
            },
            issued: Stage {
                stage_id: "C1:NEW".into(),
                ..Stage::default()
            },
        }
    }

    #[test]
    fn a_block_stage_blocks_and_leaving_it_lifts_only_the_crms_block() {
        let s = stages();
        let amo = |status_id| StageNow::Amo {
            pipeline_id: 7001,
            status_id,
        };
        assert_eq!(stage_actions(&s, &amo(142005), false), vec![Action::Block]);
        assert_eq!(stage_actions(&s, &amo(142005), true), vec![Action::Block]);
        assert_eq!(stage_actions(&s, &amo(142001), true), vec![Action::Unblock]);
        assert_eq!(stage_actions(&s, &amo(142001), false), vec![]);
        assert_eq!(stage_actions(&s, &amo(142002), false), vec![Action::Return]);
        // The same status id in another pipeline is another stage.
        let other = StageNow::Amo {
            pipeline_id: 9999,
            status_id: 142005,
        };
        assert_eq!(stage_actions(&s, &other, false), vec![]);
        assert_eq!(
            stage_actions(&s, &StageNow::Bitrix("C1:NEW"), false),
            vec![Action::Issued]
        );
        // Unconfigured stages (0 / empty) never match.
        assert_eq!(
            stage_actions(&InboundStages::default(), &amo(0), false),
            vec![]
        );
        assert_eq!(
            stage_actions(&InboundStages::default(), &StageNow::Bitrix(""), false),
            vec![]
        );
    }

    #[test]
    fn a_redelivered_body_acts_once_until_it_expires() {
        let t0 = Instant::now();
        let mut seen = Seen::new(Duration::from_secs(3600), 1000);
        assert!(seen.first("amocrm", b"x=1", t0));
        assert!(!seen.first("amocrm", b"x=1", t0 + Duration::from_secs(10)));
        assert!(seen.first("bitrix24", b"x=1", t0), "scoped by CRM");
        assert!(seen.first("amocrm", b"x=2", t0));
        assert!(seen.first("amocrm", b"x=1", t0 + Duration::from_secs(3601)));
        let mut small = Seen::new(Duration::from_secs(3600), 2);
        for b in [b"a", b"b", b"c"] {
            assert!(small.first("s", b, t0));
        }
        assert!(
            small.first("s", b"a", t0),
            "the oldest was evicted at the cap"
        );
    }

    #[test]
    fn actors_name_the_crm_user_when_there_is_one() {
        assert_eq!(actor("amocrm", Some("555")), "amocrm:user:555");
        assert_eq!(actor("amocrm", Some("0")), "amocrm");
        assert_eq!(actor("bitrix24", None), "bitrix24");
    }
}
