//! The periodic balance check: every `[rules] balance_check_interval`, the balance of the
//! driver of every issued car and of every driver whose cars carry `low_balance` (whatever
//! their shift: a blocked car cannot drive, so only a check can lift its block) is pulled from
//! the CRM and handed to the rules actor, which orders it against pushed balances by time.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::connector::{Connector, ConnectorError};
use super::engine::CrmHandle;

pub async fn run(
    handle: CrmHandle,
    connector: Arc<dyn Connector>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let drivers = handle.balance_targets().await;
        metrics::counter!("fleetgate_crm_balance_checks_total").increment(1);
        // Many deals per request (amoCRM 250, Bitrix24 2,500); a slice at a time so that a
        // shutdown is not held up by a whole fleet.
        'check: for part in drivers.chunks(500) {
            if shutdown.is_cancelled() {
                break;
            }
            let results = connector.balances(part).await;
            for (q, r) in part.iter().zip(results) {
                match r {
                    Ok(b) => handle.pulled_balance(&q.driver_id, b.rub, b.as_of).await,
                    Err(ConnectorError::NoBalance) => {
                        tracing::debug!("crm: balance pull not configured");
                        break 'check;
                    }
                    Err(e) => {
                        metrics::counter!("fleetgate_crm_balance_check_errors_total").increment(1);
                        tracing::warn!(driver = q.driver_id, error = %e, "crm: balance check failed");
                    }
                }
            }
        }
    }
}
