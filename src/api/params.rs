//! Query-string values with errors that say what was expected. A bad `from`/`to` otherwise
//! surfaces as the deserializer's own words ("premature end of input"), which name neither
//! the field nor the format.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer};

/// What a time in a query string must look like.
pub const RFC3339_HINT: &str = "an RFC 3339 time such as 2026-05-01T12:00:00Z \
     (a '+' in an offset must be sent as %2B)";

/// An optional RFC 3339 time (`from`, `to`): absent = `None`; empty is an error like any
/// other value that is not a time (the OpenAPI document says `date-time`).
pub fn opt_time<'de, D>(d: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_time(&s).map(Some).map_err(serde::de::Error::custom)
}

/// `s` as an RFC 3339 time, or an error quoting it and saying what was expected.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{s}' is not {RFC3339_HINT}: {e}"))
}

/// What a day in a query string must look like.
pub const DATE_HINT: &str = "a date such as 2026-05-01 (YYYY-MM-DD, a UTC day)";

/// An optional calendar day (`from`, `to` of `/summaries`): absent = `None`.
pub fn opt_date<'de, D>(d: D) -> Result<Option<NaiveDate>, D::Error>
where
    D: Deserializer<'de>,
{
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    NaiveDate::parse_from_str(&s, "%Y-%m-%d")
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("'{s}' is not {DATE_HINT}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Q {
        #[serde(default, deserialize_with = "opt_time")]
        from: Option<DateTime<Utc>>,
    }

    #[derive(Debug, Deserialize)]
    struct D {
        #[serde(default, deserialize_with = "opt_date")]
        from: Option<NaiveDate>,
    }

    #[test]
    fn a_bad_date_says_what_a_date_looks_like() {
        let d = |s: &str| {
            let uri: axum::http::Uri = format!("/x?{s}").parse().unwrap();
            axum::extract::Query::<D>::try_from_uri(&uri)
                .map(|q| q.0.from)
                .map_err(|e| e.body_text())
        };
        assert_eq!(
            d("from=2026-12-07").unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 7)
        );
        assert_eq!(d("").unwrap(), None);
        for bad in ["from=07.12.2026", "from=2026-02-30", "from="] {
            let e = d(bad).unwrap_err();
            assert!(e.contains("YYYY-MM-DD"), "{bad}: {e}");
        }
    }

    fn q(s: &str) -> Result<Q, String> {
        let uri: axum::http::Uri = format!("/x?{s}").parse().unwrap();
        axum::extract::Query::<Q>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn a_bad_time_says_rfc_3339_is_expected_and_quotes_the_value() {
        let e = q("from=yesterday").unwrap_err();
        assert!(e.contains("'yesterday' is not an RFC 3339 time"), "{e}");
        // An unescaped '+' arrives as a space: the hint says how to send it.
        let e = q("from=2026-05-01T12:00:00+03:00").unwrap_err();
        assert!(e.contains("%2B"), "{e}");
    }

    #[test]
    fn good_and_absent_times_parse_and_an_empty_one_is_refused() {
        let t = q("from=2026-05-01T12:00:00%2B03:00").unwrap().from.unwrap();
        assert_eq!(t.to_rfc3339(), "2026-05-01T09:00:00+00:00");
        assert!(q("").unwrap().from.is_none());
        let e = q("from=").unwrap_err();
        assert!(e.contains("'' is not an RFC 3339 time"), "{e}");
    }
}
