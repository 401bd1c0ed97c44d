//! The CRM rules (`low_balance`, `inspection`) reach the engine block through the same
//! [`ImmobiliserHandle::set_reason`] path as every other rule; the CRM learns from the
//! snapshot when the car confirmed a block, for every reason (zones, operators, its own).

use std::collections::HashMap;

use async_trait::async_trait;

use super::{BlockReason, ImmobError, ImmobState, ImmobiliserHandle};
use crate::crm::{BlockReasons, BlockView, ReasonError};
use crate::model::VehicleId;

#[async_trait]
impl BlockReasons for ImmobiliserHandle {
    async fn set_reason(
        &self,
        vehicle: &VehicleId,
        reason: &str,
        active: bool,
        actor: &str,
        comment: &str,
    ) -> Result<(), ReasonError> {
        let refused = |e: ImmobError| ReasonError(Box::new(e));
        let reason = BlockReason::parse(reason).map_err(refused)?;
        let comment = (!comment.is_empty()).then(|| comment.to_string());
        ImmobiliserHandle::set_reason(self, vehicle, reason, active, actor, comment)
            .await
            .map(|_| ())
            .map_err(refused)
    }

    async fn snapshot(&self) -> HashMap<VehicleId, BlockView> {
        let views = self.views().await.unwrap_or_default();
        views
            .into_iter()
            .filter(|(_, v)| !v.reasons.is_empty() || v.state != ImmobState::Running)
            .map(|(id, v)| {
                let pending = matches!(v.state, ImmobState::BlockPending | ImmobState::Blocking);
                let reasons = v.reasons.iter().map(|r| r.as_str().to_string()).collect();
                let comments = v
                    .reason_details
                    .iter()
                    .filter_map(|d| Some((d.reason.as_str().to_string(), d.comment.clone()?)))
                    .collect();
                let view = BlockView {
                    reasons,
                    pending,
                    confirmed: v.state == ImmobState::Blocked,
                    comments,
                };
                (id, view)
            })
            .collect()
    }
}
