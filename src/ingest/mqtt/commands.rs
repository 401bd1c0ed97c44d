//! Commands to MQTT devices: published with QoS 1 on `[mqtt] command_topic`, encoded for the
//! device's protocol. The command lifecycle reaches them through the device's session
//! ([`super::link`]); answers arrive on `[mqtt] response_topic` (or, for Teltonika devices,
//! as Codec 12 on their telemetry topic) and go back as session events.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rumqttc::{AsyncClient, QoS};

use super::topic;
use crate::model::DeviceId;
use crate::protocols::{mqtt_json, DeviceCommand, Protocol, Transport};

#[derive(Debug, thiserror::Error)]
pub enum MqttCommandError {
    #[error("device {0} has not published over MQTT to this instance")]
    UnknownDevice(DeviceId),
    #[error("{0}: no MQTT command encoding for this protocol")]
    Unsupported(&'static str),
    #[error("MQTT client stopped: {0}")]
    Client(#[from] rumqttc::ClientError),
}

/// Handle for publishing commands; cheap to clone.
#[derive(Clone)]
pub struct MqttCommands {
    client: AsyncClient,
    command_topic: String,
    /// The payload format each device last used (its commands are encoded the same way).
    /// Written on a device's first message, read when a command is sent.
    seen: Arc<RwLock<HashMap<DeviceId, Protocol>>>,
}

impl MqttCommands {
    pub(super) fn new(client: AsyncClient, command_topic: String) -> Self {
        MqttCommands {
            client,
            command_topic,
            seen: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// Remember how `device` talks (called for every committed message; cheap when known).
    pub(super) fn saw(&self, device: &DeviceId, protocol: Protocol) {
        let known = self
            .seen
            .read()
            .map(|m| m.get(device) == Some(&protocol))
            .unwrap_or(true);
        if !known {
            if let Ok(mut m) = self.seen.write() {
                m.insert(device.clone(), protocol);
            }
        }
    }

    /// The protocol `device` publishes with, when it has published to this instance over MQTT.
    /// The command router uses this to choose MQTT over a TCP connection.
    pub fn protocol_of(&self, device: &DeviceId) -> Option<Protocol> {
        self.seen.read().ok()?.get(device).copied()
    }

    /// Publish `cmd` for `device` (QoS 1, not retained), encoded for the device's protocol:
    /// JSON for `mqtt` devices, a Codec 12 packet for Teltonika. Returns once the client has
    /// queued it; the broker holds it for a device with a persistent session.
    pub async fn send(
        &self,
        device: &DeviceId,
        cmd: &DeviceCommand,
    ) -> Result<(), MqttCommandError> {
        let protocol = self
            .protocol_of(device)
            .ok_or_else(|| MqttCommandError::UnknownDevice(device.clone()))?;
        let payload = encode(protocol, cmd)?;
        self.client
            .publish(
                topic::fill(&self.command_topic, device.as_str()),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await?;
        metrics::counter!("fleetgate_mqtt_commands_sent_total").increment(1);
        Ok(())
    }
}

/// A command as the device's protocol expects it on MQTT: JSON for `mqtt` devices, the
/// protocol's own command packet otherwise (Codec 12 for Teltonika).
pub fn encode(protocol: Protocol, cmd: &DeviceCommand) -> Result<bytes::Bytes, MqttCommandError> {
    match protocol {
        Protocol::Mqtt => Ok(mqtt_json::encode_command(cmd)),
        other => other
            .session(Transport::Tcp)
            .encode_command(cmd)
            .map_err(|_| MqttCommandError::Unsupported(other.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::{teltonika, CommandBody};

    #[test]
    fn commands_are_encoded_per_protocol() {
        let cmd = DeviceCommand {
            seq: 3,
            body: CommandBody::EngineStop,
        };
        let json = encode(Protocol::Mqtt, &cmd).unwrap();
        assert!(json.starts_with(b"{"));
        let tel = encode(Protocol::Teltonika, &cmd).unwrap();
        assert_eq!(tel, teltonika::encode_codec12(b"setdigout 1"));
        assert!(matches!(
            encode(Protocol::OsmAnd, &cmd),
            Err(MqttCommandError::Unsupported("osmand"))
        ));
    }
}
