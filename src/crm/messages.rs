//! Driver messages: Russian templates from `[rules.messages]` (with defaults), filled with
//! amounts written the Russian way — `4 999,99 ₽`, grouped by spaces, a decimal comma, kopecks
//! only when there are any, never rounded to whole roubles (4 999,99 ₽ is not 5 000 ₽).

use serde::{Deserialize, Serialize};

use crate::config::error::{invalid, ConfigError};

/// Message templates; `{name}` is replaced by a value (see each field).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Messages {
    /// `low_balance` is set: `{balance}`, `{min}` (amounts with ₽).
    pub low_balance: String,
    /// `inspection` is set: `{cause}` (why, in Russian).
    pub inspection: String,
    /// The car confirmed its block (a note on the deal): `{reasons}`, named in Russian.
    pub blocked: String,
    /// The last reason was lifted and the car confirmed the unblock.
    pub unblocked: String,
}

impl Default for Messages {
    fn default() -> Self {
        Messages {
            low_balance: "Баланс {balance} ниже минимума {min}. Пополните баланс: после остановки \
                          автомобиль не заведётся."
                .into(),
            inspection: "Требуется техосмотр: {cause}. Пройдите ТО: после остановки автомобиль \
                         не заведётся."
                .into(),
            blocked: "Автомобиль заблокирован: {reasons}.".into(),
            unblocked: "Автомобиль разблокирован: причин блокировки больше нет.".into(),
        }
    }
}

impl Messages {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            "rules.messages.low_balance",
            &self.low_balance,
            &["balance", "min"],
        )?;
        check("rules.messages.inspection", &self.inspection, &["cause"])?;
        check("rules.messages.blocked", &self.blocked, &["reasons"])?;
        check("rules.messages.unblocked", &self.unblocked, &[])
    }

    /// The note for a confirmed block; `reasons` are (name, comment) pairs.
    pub fn blocked(&self, reasons: &[(String, Option<String>)]) -> String {
        let names: Vec<String> = reasons
            .iter()
            .map(|(r, c)| reason_ru(r, c.as_deref()))
            .collect();
        fill(&self.blocked, &[("reasons", names.join("; "))])
    }

    pub fn unblocked(&self) -> String {
        self.unblocked.clone()
    }

    pub fn low_balance(&self, balance_rub: f64, min_rub: f64) -> String {
        fill(
            &self.low_balance,
            &[("balance", rub(balance_rub)), ("min", rub(min_rub))],
        )
    }

    pub fn inspection(&self, cause: &str) -> String {
        fill(&self.inspection, &[("cause", cause.to_string())])
    }
}

fn check(key: &str, template: &str, names: &[&str]) -> Result<(), ConfigError> {
    let bad = |m: String| invalid(key, m);
    if template.trim().is_empty() {
        return Err(bad("must not be empty".into()));
    }
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        let Some(j) = rest[i..].find('}') else {
            return Err(bad("an unclosed '{'".into()));
        };
        let name = &rest[i + 1..i + j];
        if !names.contains(&name) {
            return Err(bad(format!(
                "unknown placeholder {{{name}}} (known: {})",
                names.join(", ")
            )));
        }
        rest = &rest[i + j + 1..];
    }
    Ok(())
}

fn fill(template: &str, values: &[(&str, String)]) -> String {
    values.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

/// A block reason as a manager reads it. Reasons other rules may add are named as they are
/// (they are `[a-z0-9_]` identifiers, quoted so they read as a name, not as prose).
pub fn reason_ru(reason: &str, comment: Option<&str>) -> String {
    match reason {
        "outside_service_area" => "за пределами зоны обслуживания".into(),
        "low_balance" => "низкий баланс".into(),
        "inspection" => "просрочен ТО".into(),
        "manual" => match comment.map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) => format!("ручная блокировка: {c}"),
            None => "ручная блокировка".into(),
        },
        // Set by a manager moving the deal to the block stage in the CRM itself.
        "crm_manual" => "блокировка менеджером в CRM".into(),
        other => format!("причина «{other}»"),
    }
}

/// The CRM note for a postponed inspection: `ТО перенесено (2-й раз): шиномонтаж занят;
/// новый срок 20.12.2026, 60 000 км.`
pub fn postponed_ru(
    times: u32,
    reason: Option<&str>,
    due_date: Option<chrono::NaiveDate>,
    due_km: Option<f64>,
) -> String {
    let mut s = format!("ТО перенесено ({times}-й раз)");
    if let Some(r) = reason {
        s.push_str(": ");
        s.push_str(r);
    }
    let mut due = Vec::new();
    if let Some(d) = due_date {
        due.push(d.format("%d.%m.%Y").to_string());
    }
    if let Some(k) = due_km {
        due.push(format!("{} км", group(k.max(0.0).round() as u64)));
    }
    if !due.is_empty() {
        s.push_str("; новый срок ");
        s.push_str(&due.join(", "));
    }
    s.push('.');
    s
}

/// Digits grouped by three with spaces: `151 234`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// An amount in roubles: `4 999,99 ₽`, `9 000 ₽`, `-1 500,50 ₽`.
pub fn rub(x: f64) -> String {
    let kop = (x * 100.0).round();
    let sign = if kop < 0.0 { "-" } else { "" };
    let kop = kop.abs() as u64;
    let (r, k) = (kop / 100, kop % 100);
    if k == 0 {
        format!("{sign}{} ₽", group(r))
    } else {
        format!("{sign}{},{k:02} ₽", group(r))
    }
}

/// `раз` or `раза` after a count (2–4 раза, 5 раз, 12 раз, 22 раза).
pub fn times(n: u32) -> &'static str {
    match (n % 10, n % 100) {
        (2..=4, m) if !(12..=14).contains(&m) => "раза",
        _ => "раз",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_written_the_russian_way_without_rounding() {
        assert_eq!(rub(4999.99), "4 999,99 ₽");
        assert_eq!(rub(5000.0), "5 000 ₽");
        assert_eq!(rub(9000.5), "9 000,50 ₽");
        assert_eq!(rub(1_234_567.0), "1 234 567 ₽");
        assert_eq!(rub(-1500.5), "-1 500,50 ₽");
        assert_eq!(rub(0.0), "0 ₽");
        assert_eq!(group(151_234), "151 234");
    }

    #[test]
    fn the_default_low_balance_message_is_russian_and_exact() {
        let m = Messages::default();
        let text = m.low_balance(4999.99, 5000.0);
        assert_eq!(
            text,
            "Баланс 4 999,99 ₽ ниже минимума 5 000 ₽. Пополните баланс: после остановки \
             автомобиль не заведётся."
        );
        assert!(!text.chars().any(|c| c.is_ascii_alphabetic()), "{text}");
    }

    #[test]
    fn block_notes_name_every_reason_in_russian() {
        let m = Messages::default();
        let text = m.blocked(&[
            ("low_balance".into(), Some("баланс 100 ₽".into())),
            ("manual".into(), Some("долг за аренду".into())),
            ("outside_service_area".into(), None),
            ("inspection".into(), None),
        ]);
        assert_eq!(
            text,
            "Автомобиль заблокирован: низкий баланс; ручная блокировка: долг за аренду; \
             за пределами зоны обслуживания; просрочен ТО."
        );
        assert!(!text.chars().any(|c| c.is_ascii_alphabetic()), "{text}");
        assert_eq!(reason_ru("manual", Some("  ")), "ручная блокировка");
        assert_eq!(reason_ru("crm_manual", None), "блокировка менеджером в CRM");
        assert!(!m.unblocked().chars().any(|c| c.is_ascii_alphabetic()));
    }

    #[test]
    fn counts_agree_with_their_noun() {
        let words: Vec<_> = [1, 2, 3, 5, 12, 22, 111].map(times).into();
        assert_eq!(words, ["раз", "раза", "раза", "раз", "раз", "раза", "раз"]);
    }

    #[test]
    fn templates_name_only_known_placeholders() {
        let mut m = Messages::default();
        assert!(m.validate().is_ok());
        m.low_balance = "Баланс {balanse}".into();
        let e = m.validate().unwrap_err().to_string();
        assert!(e.starts_with("rules.messages.low_balance:"), "{e}");
        m.low_balance = String::new();
        assert!(m.validate().is_err());
        m = Messages::default();
        m.inspection = "ТО {cause".into();
        assert!(m.validate().is_err());
    }
}
