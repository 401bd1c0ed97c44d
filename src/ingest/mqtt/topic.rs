//! MQTT topic filters (pure): matching a topic against a subscription and reading the device
//! id out of it. The device id is the level matched by the filter's first `+`; command and
//! response topics are templates with a `{device}` level.

/// The filter without a shared-subscription prefix (`$share/<group>/…`).
pub fn unshared(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map(|(_, f)| f).unwrap_or(""),
        None => filter,
    }
}

/// The filter to subscribe with: `$share/<group>/<filter>` when a group is set.
pub fn shared(filter: &str, group: &str) -> String {
    if group.is_empty() {
        filter.to_string()
    } else {
        format!("$share/{group}/{filter}")
    }
}

/// Does `topic` match `filter` (`+` one level, `#` the rest; `$`-topics only literally)?
pub fn matches(filter: &str, topic: &str) -> bool {
    let filter = unshared(filter);
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The level of `topic` that the first `+` of `filter` matched, when it matches and has one.
pub fn device_level<'t>(filter: &str, topic: &'t str) -> Option<&'t str> {
    if !matches(filter, topic) {
        return None;
    }
    let i = unshared(filter).split('/').position(|l| l == "+")?;
    topic.split('/').nth(i).filter(|l| !l.is_empty())
}

/// A `{device}` template as a subscription filter (`fleet/{device}/responses` → `fleet/+/responses`).
pub fn template_filter(template: &str) -> String {
    template
        .split('/')
        .map(|l| if l == "{device}" { "+" } else { l })
        .collect::<Vec<_>>()
        .join("/")
}

/// A `{device}` template filled in for one device.
pub fn fill(template: &str, device: &str) -> String {
    template.replace("{device}", device)
}

/// Check a configured filter: levels, wildcards where MQTT allows them.
pub fn valid_filter(filter: &str) -> Result<(), String> {
    let f = unshared(filter);
    if f.is_empty() {
        return Err("empty topic filter".into());
    }
    let levels: Vec<_> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(format!("'{filter}': '#' must be a whole last level"));
        }
        if l.contains('+') && *l != "+" {
            return Err(format!("'{filter}': '+' must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_broker() {
        assert!(matches(
            "fleet/+/telemetry",
            "fleet/861230043958102/telemetry"
        ));
        assert!(!matches("fleet/+/telemetry", "fleet/a/b/telemetry"));
        assert!(!matches("fleet/+/telemetry", "fleet/a/responses"));
        assert!(matches("fleet/#", "fleet/a/b"));
        assert!(matches("fleet/#", "fleet"));
        assert!(!matches("+/data", "$SYS/data"));
        assert!(matches("$share/gw/fleet/+/telemetry", "fleet/x/telemetry"));
        assert!(!matches("fleet/+", "fleet/x/y"));
    }

    #[test]
    fn device_comes_from_the_first_plus() {
        assert_eq!(
            device_level("fleet/+/telemetry", "fleet/dev-1/telemetry"),
            Some("dev-1")
        );
        assert_eq!(
            device_level("$share/g/+/data", "356307042441013/data"),
            Some("356307042441013")
        );
        assert_eq!(device_level("fleet/telemetry", "fleet/telemetry"), None);
        assert_eq!(device_level("fleet/+/telemetry", "fleet//telemetry"), None);
        assert_eq!(device_level("fleet/+/telemetry", "other/x/telemetry"), None);
    }

    #[test]
    fn templates_and_shared_names() {
        assert_eq!(
            template_filter("fleet/{device}/responses"),
            "fleet/+/responses"
        );
        assert_eq!(fill("fleet/{device}/commands", "abc"), "fleet/abc/commands");
        assert_eq!(
            shared("fleet/+/telemetry", "gw"),
            "$share/gw/fleet/+/telemetry"
        );
        assert_eq!(shared("fleet/+/telemetry", ""), "fleet/+/telemetry");
        assert_eq!(unshared("$share/gw/fleet/+"), "fleet/+");
    }

    #[test]
    fn filters_are_validated() {
        assert!(valid_filter("fleet/+/telemetry").is_ok());
        assert!(valid_filter("fleet/#").is_ok());
        assert!(valid_filter("fleet/#/x").is_err());
        assert!(valid_filter("fleet/a+/x").is_err());
        assert!(valid_filter("").is_err());
    }
}
