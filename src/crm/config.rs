//! `[crm]`, `[crm.stages]` and `[rules]`: where CRM events go and how the business rules
//! (on line, wants to return, balance, inspection) are tuned.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::error::{invalid, ConfigError};

/// A stage of an amoCRM pipeline, or a Bitrix24 `STAGE_ID`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Stage {
    /// amoCRM pipeline id (always sent: statuses 142/143 exist in every pipeline).
    pub pipeline_id: u64,
    /// amoCRM status id.
    pub status_id: u64,
    /// Bitrix24 `STAGE_ID` (e.g. `C2:EXECUTING`).
    pub stage_id: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Stages {
    pub on_line: Stage,
    pub wants_to_return: Stage,
}

/// Custom fields of the deal that fleetgate writes (amoCRM field ids; Bitrix24 `UF_CRM_*`
/// names go in the `*_code` keys). 0 / empty = not written.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Fields {
    pub mileage_field_id: u64,
    pub blocked_field_id: u64,
    pub location_field_id: u64,
    /// Read by the balance check (amoCRM numeric field of the deal).
    pub balance_field_id: u64,
    pub mileage_field_code: String,
    pub blocked_field_code: String,
    pub location_field_code: String,
    pub balance_field_code: String,
    /// Where the inspection's remaining days and km are written (amoCRM text field id /
    /// Bitrix24 `UF_CRM_*`), e.g. `осталось 5 дн., 420 км`.
    pub inspection_left_field_id: u64,
    pub inspection_left_field_code: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CrmConfig {
    /// `off`, `webhook`, `amocrm` or `bitrix24`.
    pub kind: String,
    /// webhook: where events are POSTed.
    pub url: String,
    /// webhook: HMAC-SHA256 key of the `X-Fleetgate-Signature` header.
    pub secret: String,
    /// webhook: balance endpoint (`GET {balance_url}?driver_id=…&vehicle_id=…&deal_id=…`).
    pub balance_url: String,
    /// amocrm: `https://<subdomain>.amocrm.ru`.
    pub base_url: String,
    /// amocrm: long-lived token of a private integration, sent as Bearer.
    pub token: String,
    /// bitrix24: incoming-webhook base, `https://<portal>/rest/<user>/<secret>/`.
    pub webhook_url: String,
    /// Requests per second to the CRM (0 = the kind's default: amoCRM 7, Bitrix24 2, webhook 20).
    pub rate_per_s: f64,
    /// Requests allowed in a burst (0 = default: amoCRM 7, Bitrix24 50, webhook 20).
    pub burst: u32,
    /// Most deals in one amoCRM bulk PATCH (≤ 50).
    pub batch_max: usize,
    /// An event not delivered within this many seconds goes to the dead-letter list.
    pub event_ttl_s: u64,
    /// Backoff after the first failure, seconds; doubles per attempt up to `backoff_max_s`.
    pub backoff_initial_s: f64,
    pub backoff_max_s: f64,
    /// Per-request timeout, seconds.
    pub timeout_s: u64,
    /// The CRM refused the credentials (401/403): the whole connector waits this long before
    /// it tries again.
    pub auth_pause_s: u64,
    /// How often the worker looks for due events when idle, milliseconds.
    pub poll_ms: u64,
    /// Delivered events are kept this many days for the API, then purged.
    pub keep_delivered_days: u64,
    pub stages: Stages,
    pub fields: Fields,
    /// `[crm.inbound]`: the CRM's own webhooks into fleetgate.
    pub inbound: InboundConfig,
    /// Where car facts go (location, mileage, blocked state, inspection fields, block notes):
    /// `deal` (the driver's deal) or `company` (the car's company card: amoCRM "Компания",
    /// Bitrix24 company). Stage moves always go to the driver's deal.
    pub car_entity: String,
    /// While a car moves, its location is written to the car card at most once per this many
    /// minutes (and on every stage change); never while it stands. 0 = the kind's default:
    /// amoCRM 10 (1,500 moving cars cost at most 2.5 requests/s of its 7, fewer with bulk
    /// PATCHes of 50), Bitrix24 30 (0.83 of its 2 requests/s), webhook 10.
    pub location_interval_min: u64,
    /// `[crm.amocrm]`: OAuth 2.0 of an amoCRM integration (instead of a long-lived `token`).
    pub amocrm: AmoOAuth,
}

/// `[crm.amocrm]`: the keys amoCRM shows for an integration ("Ключи и доступы"). With them,
/// `fleetgate crm authorize CODE` exchanges the authorization code once; the tokens live in
/// the database and are refreshed by the daemon.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AmoOAuth {
    pub client_id: String,
    pub client_secret: String,
    /// The redirect URI registered with the integration (amoCRM checks it on every exchange).
    pub redirect_uri: String,
    /// Refresh this many seconds before the access token expires.
    pub refresh_before_s: u64,
}

impl Default for AmoOAuth {
    fn default() -> Self {
        AmoOAuth {
            client_id: String::new(),
            client_secret: String::new(),
            redirect_uri: String::new(),
            refresh_before_s: 3600,
        }
    }
}

impl AmoOAuth {
    /// All three keys are set: the connector authenticates with OAuth tokens.
    pub fn enabled(&self) -> bool {
        !(self.client_id.is_empty()
            || self.client_secret.is_empty()
            || self.redirect_uri.is_empty())
    }
}

/// Where car facts are written (`[crm] car_entity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarEntity {
    Deal,
    Company,
}

/// `[crm.inbound]`: amoCRM and Bitrix24 call fleetgate directly (no middleware).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    /// amoCRM: the last path segment of `POST /api/v1/crm/inbound/amocrm/{secret}` (amoCRM
    /// cannot send an Authorization header). Empty = the route answers 404. ≥ 16 characters of
    /// `[A-Za-z0-9_-]`.
    pub secret: String,
    /// Bitrix24: the `auth[application_token]` its event handlers send. Empty = 404.
    pub application_token: String,
    /// A body delivered again within this many seconds acts once.
    pub dedup_s: u64,
    pub stages: super::inbound::InboundStages,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            secret: String::new(),
            application_token: String::new(),
            dedup_s: 3600,
            stages: Default::default(),
        }
    }
}

impl Default for CrmConfig {
    fn default() -> Self {
        CrmConfig {
            kind: "off".into(),
            url: String::new(),
            secret: String::new(),
            balance_url: String::new(),
            base_url: String::new(),
            token: String::new(),
            webhook_url: String::new(),
            rate_per_s: 0.0,
            burst: 0,
            batch_max: 50,
            event_ttl_s: 7 * 24 * 3600,
            backoff_initial_s: 1.0,
            backoff_max_s: 300.0,
            timeout_s: 15,
            auth_pause_s: 60,
            poll_ms: 500,
            keep_delivered_days: 7,
            stages: Stages::default(),
            fields: Fields::default(),
            inbound: InboundConfig::default(),
            car_entity: "deal".into(),
            location_interval_min: 0,
            amocrm: AmoOAuth::default(),
        }
    }
}

impl CrmConfig {
    /// Requests per second and burst for the configured kind.
    pub fn rate(&self) -> (f64, u32) {
        let (r, b) = match self.kind.as_str() {
            "amocrm" => (7.0, 7),
            "bitrix24" => (2.0, 50),
            _ => (20.0, 20),
        };
        (
            if self.rate_per_s > 0.0 {
                self.rate_per_s
            } else {
                r
            },
            if self.burst > 0 { self.burst } else { b },
        )
    }

    /// `car_entity` as validated (anything but `company` is the deal).
    pub fn car_entity(&self) -> CarEntity {
        if self.car_entity == "company" {
            CarEntity::Company
        } else {
            CarEntity::Deal
        }
    }

    /// How often a moving car's location is written, with the kind's default for 0; `None`
    /// when there is nowhere to write it (amoCRM / Bitrix24 without a location field).
    pub fn location_interval(&self) -> Option<std::time::Duration> {
        let field = match self.kind.as_str() {
            "amocrm" => self.fields.location_field_id != 0,
            "bitrix24" => !self.fields.location_field_code.is_empty(),
            _ => true,
        };
        let min = match (self.location_interval_min, self.kind.as_str()) {
            (0, "bitrix24") => 30,
            (0, _) => 10,
            (m, _) => m,
        };
        field.then(|| std::time::Duration::from_secs(min * 60))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let need = |key: &str, v: &str| {
            if v.is_empty() {
                Err(invalid(
                    key,
                    format!("required when crm.kind = \"{}\"", self.kind),
                ))
            } else {
                Ok(())
            }
        };
        let url = |key: &str, v: &str| {
            if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                Err(invalid(key, format!("'{v}' is not an http(s) URL")))
            } else {
                Ok(())
            }
        };
        match self.kind.as_str() {
            "off" => {}
            "webhook" => {
                need("crm.url", &self.url)?;
                need("crm.secret", &self.secret)?;
            }
            "amocrm" => {
                need("crm.base_url", &self.base_url)?;
                let o = &self.amocrm;
                let set = [&o.client_id, &o.client_secret, &o.redirect_uri]
                    .iter()
                    .filter(|v| !v.is_empty())
                    .count();
                if set == 0 && self.token.is_empty() {
                    return Err(invalid(
                        "crm.token",
                        "required when crm.kind = \"amocrm\" (a long-lived token), unless \
                         [crm.amocrm] client_id, client_secret and redirect_uri are set (OAuth)",
                    ));
                }
                if set != 0 && set != 3 {
                    let missing = [
                        ("crm.amocrm.client_id", &o.client_id),
                        ("crm.amocrm.client_secret", &o.client_secret),
                        ("crm.amocrm.redirect_uri", &o.redirect_uri),
                    ]
                    .into_iter()
                    .find(|(_, v)| v.is_empty())
                    .map_or("crm.amocrm", |(k, _)| k);
                    return Err(invalid(
                        missing,
                        "OAuth needs client_id, client_secret and redirect_uri together",
                    ));
                }
                if set == 3 && !self.token.is_empty() {
                    return Err(invalid(
                        "crm.token",
                        "set either a long-lived token or [crm.amocrm] OAuth keys, not both",
                    ));
                }
                if set == 3
                    && !o.redirect_uri.starts_with("https://")
                    && !o.redirect_uri.starts_with("http://")
                {
                    return Err(invalid(
                        "crm.amocrm.redirect_uri",
                        format!("'{}' is not an http(s) URL", o.redirect_uri),
                    ));
                }
                for (key, s) in [
                    ("crm.stages.on_line", &self.stages.on_line),
                    ("crm.stages.wants_to_return", &self.stages.wants_to_return),
                ] {
                    if s.pipeline_id == 0 || s.status_id == 0 {
                        return Err(invalid(key, "needs pipeline_id and status_id"));
                    }
                }
            }
            "bitrix24" => {
                need("crm.webhook_url", &self.webhook_url)?;
                for (key, s) in [
                    ("crm.stages.on_line", &self.stages.on_line),
                    ("crm.stages.wants_to_return", &self.stages.wants_to_return),
                ] {
                    if s.stage_id.is_empty() {
                        return Err(invalid(key, "needs stage_id"));
                    }
                }
            }
            other => {
                return Err(invalid(
                    "crm.kind",
                    format!("'{other}' is not one of off, webhook, amocrm, bitrix24"),
                ))
            }
        }
        url("crm.url", &self.url)?;
        url("crm.balance_url", &self.balance_url)?;
        url("crm.base_url", &self.base_url)?;
        url("crm.webhook_url", &self.webhook_url)?;
        if self.rate_per_s < 0.0 || !self.rate_per_s.is_finite() {
            return Err(invalid("crm.rate_per_s", "must be a positive number"));
        }
        if !(1..=50).contains(&self.batch_max) {
            return Err(invalid("crm.batch_max", "must be 1 to 50"));
        }
        if self.event_ttl_s == 0 {
            return Err(invalid("crm.event_ttl_s", "must be at least 1"));
        }
        if !(self.backoff_initial_s > 0.0 && self.backoff_max_s >= self.backoff_initial_s) {
            return Err(invalid(
                "crm.backoff_max_s",
                "needs 0 < backoff_initial_s <= backoff_max_s",
            ));
        }
        if self.poll_ms == 0 || self.timeout_s == 0 {
            return Err(invalid("crm.poll_ms", "poll_ms and timeout_s must be > 0"));
        }
        if !matches!(self.car_entity.as_str(), "deal" | "company") {
            return Err(invalid(
                "crm.car_entity",
                format!("'{}' is not one of deal, company", self.car_entity),
            ));
        }
        if self.car_entity == "company" && self.kind == "webhook" {
            return Err(invalid(
                "crm.car_entity",
                "\"company\" needs crm.kind = \"amocrm\" or \"bitrix24\" (the webhook carries both ids)",
            ));
        }
        if self.location_interval_min > 24 * 60 {
            return Err(invalid(
                "crm.location_interval_min",
                "must be at most 1440 (a day); 0 takes the CRM's default",
            ));
        }
        let o = &self.amocrm;
        if self.kind != "amocrm"
            && !(o.client_id.is_empty() && o.client_secret.is_empty() && o.redirect_uri.is_empty())
        {
            return Err(invalid("crm.amocrm", "is for crm.kind = \"amocrm\""));
        }
        if self.amocrm.refresh_before_s < 60 {
            return Err(invalid(
                "crm.amocrm.refresh_before_s",
                "must be at least 60 seconds",
            ));
        }
        if self.auth_pause_s == 0 {
            return Err(invalid("crm.auth_pause_s", "must be at least 1"));
        }
        let i = &self.inbound;
        if !i.secret.is_empty()
            && (i.secret.len() < 16
                || !i
                    .secret
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(invalid(
                "crm.inbound.secret",
                "at least 16 characters of A-Z, a-z, 0-9, _ and - (it is a URL path segment)",
            ));
        }
        if !i.application_token.is_empty() && i.application_token.trim() != i.application_token {
            return Err(invalid(
                "crm.inbound.application_token",
                "has leading or trailing spaces",
            ));
        }
        if i.dedup_s == 0 {
            return Err(invalid("crm.inbound.dedup_s", "must be at least 1"));
        }
        let st = &i.stages;
        for (key, stage) in [
            ("crm.inbound.stages.block", &st.block),
            ("crm.inbound.stages.unblock", &st.unblock),
            ("crm.inbound.stages.return", &st.return_),
            ("crm.inbound.stages.issued", &st.issued),
        ] {
            if stage.pipeline_id != 0 && stage.status_id == 0 {
                return Err(invalid(key, "needs status_id with pipeline_id"));
            }
        }
        if st.block != Stage::default() && st.block == st.unblock {
            return Err(invalid(
                "crm.inbound.stages.unblock",
                "is the same stage as crm.inbound.stages.block",
            ));
        }
        Ok(())
    }
}

/// A tracker signal meaning "the driver wants to return the car", per device profile
/// (protocol): a digital input (1-based, Teltonika DIN2 = 2) or an alarm name (`sos`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReturnSignal {
    pub input: Option<u8>,
    pub alarm: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Seconds of movement (ignition on, > `moving_kmh`, inside the service area) within
    /// `on_line_window` before "on line"; stops in between do not reset it.
    pub on_line_after: u64,
    /// Kilometres driven (ignition on, inside the service area) within `on_line_window` before
    /// "on line": a parking-lot shuffle is not a shift.
    pub on_line_min_km: f64,
    /// Seconds of the sliding window movement and distance are summed over.
    pub on_line_window: u64,
    /// Speed above which the car counts as moving, km/h.
    pub moving_kmh: f64,
    /// Seconds without driving after which a new shift can start.
    pub shift_gap: u64,
    /// Seconds between balance checks of drivers on line.
    pub balance_check_interval: u64,
    pub balance_min_rub: f64,
    pub inspection_max_postponements: u32,
    /// Days past `due_date` before an overdue inspection blocks.
    pub inspection_grace_days: i64,
    /// Kilometres past `due_odometer_km` before an overdue inspection blocks.
    pub inspection_grace_km: f64,
    /// Days before a document (diagnostic card, OSAGO) expires that a warning is sent.
    pub document_warn_days: i64,
    /// Days before the inspection's `due_date` that a warning (event and CRM note) goes out.
    pub inspection_warn_days: i64,
    /// Kilometres before the inspection's `due_odometer_km` that the warning goes out.
    pub inspection_warn_km: f64,
    /// Return signals per protocol name: `teltonika = { input = 2 }`, `gt06 = { alarm = "sos" }`.
    pub return_signals: BTreeMap<String, ReturnSignal>,
    /// Driver message templates (Russian).
    pub messages: super::messages::Messages,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            on_line_after: 180,
            on_line_min_km: 1.0,
            on_line_window: 600,
            moving_kmh: 5.0,
            shift_gap: 8 * 3600,
            balance_check_interval: 20 * 60,
            balance_min_rub: 5000.0,
            inspection_max_postponements: 2,
            inspection_grace_days: 3,
            inspection_grace_km: 1000.0,
            document_warn_days: 14,
            inspection_warn_days: 7,
            inspection_warn_km: 500.0,
            return_signals: BTreeMap::new(),
            messages: super::messages::Messages::default(),
        }
    }
}

impl RulesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.on_line_after == 0 {
            return Err(invalid("rules.on_line_after", "must be at least 1 second"));
        }
        if self.on_line_window < self.on_line_after {
            return Err(invalid(
                "rules.on_line_window",
                "must be at least rules.on_line_after",
            ));
        }
        if !(self.on_line_min_km.is_finite() && self.on_line_min_km >= 0.0) {
            return Err(invalid("rules.on_line_min_km", "must be a number >= 0"));
        }
        if self.shift_gap <= self.on_line_window {
            return Err(invalid(
                "rules.shift_gap",
                "must exceed rules.on_line_window",
            ));
        }
        if self.balance_check_interval < 10 {
            return Err(invalid(
                "rules.balance_check_interval",
                "must be at least 10 seconds",
            ));
        }
        if !self.balance_min_rub.is_finite() {
            return Err(invalid("rules.balance_min_rub", "must be a number"));
        }
        if self.inspection_warn_days < 0
            || !(self.inspection_warn_km.is_finite() && self.inspection_warn_km >= 0.0)
        {
            return Err(invalid(
                "rules.inspection_warn_days",
                "inspection_warn_days and inspection_warn_km must be 0 or more",
            ));
        }
        if self.inspection_grace_days < 0 || self.document_warn_days < 0 {
            return Err(invalid(
                "rules.inspection_grace_days",
                "grace and warning days must not be negative",
            ));
        }
        self.messages.validate()?;
        for (name, s) in &self.return_signals {
            if crate::protocols::Protocol::from_name(name).is_none() {
                return Err(invalid(
                    format!("rules.return_signals.{name}"),
                    "unknown protocol",
                ));
            }
            if s.input.is_none() && s.alarm.is_none() {
                return Err(invalid(
                    format!("rules.return_signals.{name}"),
                    "needs input or alarm",
                ));
            }
            if matches!(s.input, Some(0) | Some(33..)) {
                return Err(invalid(
                    format!("rules.return_signals.{name}.input"),
                    "inputs are numbered 1 to 32",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml_with_env(text, "t", Vec::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn inbound_webhooks_are_configured_by_key_and_bad_values_named() {
        let c = load(
            r#"
            [crm.inbound]
            secret = "amo-inbound-0123456789"
            application_token = "bx-token"
            [crm.inbound.stages]
            block = { pipeline_id = 7001, status_id = 142005 }
            return = { stage_id = "C1:RETURN" }
            "#,
        )
        .unwrap();
        assert_eq!(c.crm.inbound.stages.block.status_id, 142005);
        assert_eq!(c.crm.inbound.stages.return_.stage_id, "C1:RETURN");
        assert_eq!(c.crm.inbound.dedup_s, 3600);
        for (text, key) in [
            ("[crm.inbound]\nsecret = \"short\"", "crm.inbound.secret"),
            ("[crm.inbound]\nsecret = \"has/slash-0123456789\"", "crm.inbound.secret"),
            ("[crm.inbound]\ndedup_s = 0", "crm.inbound.dedup_s"),
            (
                "[crm.inbound.stages]\nblock = { pipeline_id = 7001 }",
                "crm.inbound.stages.block",
            ),
            (
                "[crm.inbound.stages]\nblock = { stage_id = \"X\" }\nunblock = { stage_id = \"X\" }",
                "crm.inbound.stages.unblock",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.starts_with(&format!("{key}:")), "{text}: {e}");
        }
    }

    #[test]
    fn car_entity_and_location_interval_take_each_crm_s_default() {
        let c = load("").unwrap();
        assert_eq!(c.crm.car_entity(), super::CarEntity::Deal);
        assert_eq!(c.crm.amocrm.refresh_before_s, 3600);
        let amo = |extra: &str| {
            load(&format!(
                "[crm]\nkind = \"amocrm\"\nbase_url = \"https://x.amocrm.ru\"\ntoken = \"t\"\n{extra}\n\
                 [crm.stages]\non_line = {{ pipeline_id = 1, status_id = 2 }}\n\
                 wants_to_return = {{ pipeline_id = 1, status_id = 3 }}\n"
            ))
        };
        assert_eq!(
            amo("").unwrap().crm.location_interval(),
            None,
            "no location field"
        );
        let amo = |extra: &str| amo(&format!("{extra}\n[crm.fields]\nlocation_field_id = 503"));
        let c = amo("car_entity = \"company\"").unwrap();
        assert_eq!(c.crm.car_entity(), super::CarEntity::Company);
        // 1,500 moving cars every 10 min = 2.5 requests/s, well inside amoCRM's 7.
        let every = |c: &crate::config::Config| c.crm.location_interval().unwrap().as_secs_f64();
        assert_eq!(every(&c), 600.0);
        assert!(1500.0 / every(&c) <= 7.0 * 0.4);
        assert_eq!(every(&amo("location_interval_min = 3").unwrap()), 180.0);
        let bx = load(
            "[crm]\nkind = \"bitrix24\"\nwebhook_url = \"https://b.ru/rest/1/x/\"\n\
             [crm.stages]\non_line = { stage_id = \"A\" }\nwants_to_return = { stage_id = \"B\" }\n\
             [crm.fields]\nlocation_field_code = \"UF_CRM_LOCATION\"\n",
        )
        .unwrap();
        // Bitrix24: one call per write, 2 requests/s: 30 min = 0.83 requests/s.
        assert_eq!(every(&bx), 1800.0);
        assert!(1500.0 / every(&bx) <= 2.0 * 0.5);
        let e = amo("car_entity = \"vehicle\"").unwrap_err();
        assert!(e.starts_with("crm.car_entity:"), "{e}");
    }

    #[test]
    fn defaults_are_the_issue_s() {
        let c = load("").unwrap();
        assert_eq!(c.crm.kind, "off");
        assert_eq!(c.rules.on_line_after, 180);
        assert_eq!(c.rules.on_line_min_km, 1.0);
        assert_eq!(c.rules.on_line_window, 600);
        assert_eq!(c.rules.shift_gap, 8 * 3600);
        assert_eq!(c.rules.balance_check_interval, 1200);
        assert_eq!(c.rules.balance_min_rub, 5000.0);
        assert_eq!(c.rules.inspection_max_postponements, 2);
    }

    #[test]
    fn amocrm_stages_and_signals_parse() {
        let c = load(
            r#"
            [crm]
            kind = "amocrm"
            base_url = "https://fleet.amocrm.ru"
            token = "t"
            [crm.stages]
            on_line = { pipeline_id = 1, status_id = 2 }
            wants_to_return = { pipeline_id = 1, status_id = 3 }
            [rules.return_signals]
            teltonika = { input = 2 }
            gt06 = { alarm = "sos" }
            "#,
        )
        .unwrap();
        assert_eq!(c.crm.stages.wants_to_return.status_id, 3);
        assert_eq!(c.crm.rate(), (7.0, 7));
        assert_eq!(c.rules.return_signals["gt06"].alarm.as_deref(), Some("sos"));
    }

    #[test]
    fn errors_name_the_key() {
        let e =
            load("[crm]\nkind = \"amocrm\"\nbase_url = \"https://x\"\ntoken = \"t\"").unwrap_err();
        assert!(e.starts_with("crm.stages.on_line:"), "{e}");
        let e = load("[crm]\nkind = \"webhook\"\nurl = \"https://x\"").unwrap_err();
        assert!(e.starts_with("crm.secret:"), "{e}");
        let e = load("[crm]\nkind = \"sap\"").unwrap_err();
        assert!(e.starts_with("crm.kind:"), "{e}");
        let e = load("[rules.return_signals]\nteltonika = { input = 0 }").unwrap_err();
        assert!(
            e.starts_with("rules.return_signals.teltonika.input:"),
            "{e}"
        );
        let e = load("[rules]\nshift_gap = 600").unwrap_err();
        assert!(e.starts_with("rules.shift_gap:"), "{e}");
        let e = load("[rules]\non_line_window = 60").unwrap_err();
        assert!(e.starts_with("rules.on_line_window:"), "{e}");
        let e = load("[rules]\non_line_min_km = -1.0").unwrap_err();
        assert!(e.starts_with("rules.on_line_min_km:"), "{e}");
    }
}
