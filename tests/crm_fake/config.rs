//! The daemon's `[crm]` sections and seams the CRM tests run with: a fake's address, quick
//! retries (0.05–0.5 s backoff, a 50 ms outbox poll) and the stages every test uses, so each
//! test file states only what its scenario adds.

use std::sync::Arc;

use fleetgate::crm::memory::{BoxZones, MemoryBlockReasons};
use fleetgate::crm::Seams;

use super::{Call, Fake};

/// amoCRM pipeline and status of "On line" and of "Wants to return".
pub const ON_LINE: (u64, u64) = (7001, 142_001);
pub const WANTS_TO_RETURN: (u64, u64) = (7001, 142_002);

/// A block goes out once the car has been still for 10 s under 5 km/h.
pub const IMMOBILISER: &str = "[immobiliser]\nsafe_for = 10\nmax_block_speed_kmh = 5\n";

/// The custom fields a manager reads on the deal: mileage, block, location, balance.
pub const FIELDS: &str = "[crm.fields]\nmileage_field_id = 501\nblocked_field_id = 502\n\
                          location_field_id = 503\nbalance_field_id = 504\n";

/// The amoCRM fake's long-lived token.
pub const AMO_TOKEN: &str = "amo-long-lived-token";

/// `[crm]` for the amoCRM fake at `url`: `keys` are more `[crm]` keys, `sections` come after
/// `[crm.stages]` (`[crm.fields]`, `[crm.inbound]`, `[rules]`…).
pub fn amocrm(url: &str, keys: &str, sections: &str) -> String {
    format!(
        "[crm]\nkind = \"amocrm\"\nbase_url = \"{url}\"\ntoken = \"{AMO_TOKEN}\"\n{QUICK}{keys}\n\
         [crm.stages]\n\
         on_line = {{ pipeline_id = {}, status_id = {} }}\n\
         wants_to_return = {{ pipeline_id = {}, status_id = {} }}\n{sections}",
        ON_LINE.0, ON_LINE.1, WANTS_TO_RETURN.0, WANTS_TO_RETURN.1
    )
}

/// `[crm]` for the Bitrix24 fake at `url` (its incoming webhook), as [`amocrm`].
pub fn bitrix24(url: &str, keys: &str, sections: &str) -> String {
    format!(
        "[crm]\nkind = \"bitrix24\"\nwebhook_url = \"{url}/rest/1/s3cr3t/\"\n{QUICK}{keys}\n\
         [crm.stages]\n\
         on_line = {{ stage_id = \"C1:EXECUTING\" }}\n\
         wants_to_return = {{ stage_id = \"C1:FINAL_INVOICE\" }}\n{sections}"
    )
}

const QUICK: &str = "backoff_initial_s = 0.05\nbackoff_max_s = 0.5\npoll_ms = 50\n";

/// Block reasons in memory and a service area around central Moscow with no parking lots.
pub fn seams() -> Seams {
    seams_with(Arc::new(MemoryBlockReasons::default()))
}

/// [`seams`] with the test's own block reasons, to read back.
pub fn seams_with(reasons: Arc<MemoryBlockReasons>) -> Seams {
    Seams {
        reasons: Some(reasons),
        zones: Some(Arc::new(BoxZones {
            area: (55.5, 37.3, 56.0, 37.9),
            lots: Vec::new(),
        })),
    }
}

/// The lead PATCHes that moved a stage (single or bulk), in order.
pub fn stage_patches(fake: &Fake) -> Vec<Call> {
    fake.ok("PATCH")
        .into_iter()
        .filter(|c| c.body.get("status_id").is_some() || c.body.as_array().is_some())
        .collect()
}
