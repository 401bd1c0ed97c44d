//! A device-side MQTT client against the real Mosquitto on 127.0.0.1:1883: QoS 1 publishes
//! that return once the broker has PUBACKed, and the messages it is sent.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use super::process::free_port;
use tokio::sync::mpsc;

pub const BROKER: &str = "mqtt://127.0.0.1:1883";

/// A name no other test run uses (topics and client ids at the shared broker).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

pub struct Device {
    pub client: AsyncClient,
    acks: mpsc::Receiver<()>,
    pub received: mpsc::Receiver<rumqttc::Publish>,
}

impl Device {
    pub async fn connect(id: &str) -> Device {
        Device::connect_to(id, 1883).await
    }

    pub async fn connect_to(id: &str, port: u16) -> Device {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut el) = AsyncClient::new(o, 64);
        let (ack_tx, acks) = mpsc::channel(1024);
        let (pub_tx, received) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        let _ = ack_tx.send(()).await;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = pub_tx.send(p).await;
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Device {
            client,
            acks,
            received,
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish queued");
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("broker PUBACK within 10 s");
    }

    /// The next message sent to this device (within `secs`), if any.
    pub async fn next(&mut self, secs: u64) -> Option<rumqttc::Publish> {
        tokio::time::timeout(Duration::from_secs(secs), self.received.recv())
            .await
            .ok()
            .flatten()
    }
}

/// A `[mqtt]` section for a gateway with its own client id and topic prefix.
pub fn section(client_id: &str, prefix: &str) -> String {
    format!(
        "[mqtt]\nurl = \"{BROKER}\"\nclient_id = \"{client_id}\"\ntopics = [\"{prefix}/+/telemetry\"]\n\
         command_topic = \"{prefix}/{{device}}/commands\"\nresponse_topic = \"{prefix}/{{device}}/responses\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 1000\n"
    )
}

/// Remove the persistent sessions a test left at the shared broker: connecting with a clean
/// session discards the old one.
pub async fn forget_sessions(ids: &[String]) {
    for id in ids {
        let mut o = MqttOptions::new(id.clone(), "127.0.0.1", 1883);
        o.set_clean_session(true);
        let (client, mut el) = AsyncClient::new(o, 4);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = client.disconnect().await;
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// A private Mosquitto with persistence, to restart without disturbing the other tests.
pub struct Broker {
    child: Child,
    conf: std::path::PathBuf,
    pub port: u16,
}

impl Broker {
    pub fn start(dir: &std::path::Path) -> Broker {
        Broker::start_with(dir, "max_queued_messages 10000\n")
    }

    /// With `extra` lines of mosquitto.conf (queue and in-flight limits).
    pub fn start_with(dir: &std::path::Path, extra: &str) -> Broker {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\n{extra}user root\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut b = Broker {
            child: Broker::spawn(&conf),
            conf,
            port,
        };
        b.wait_up();
        b
    }

    fn spawn(conf: &std::path::Path) -> Child {
        let bin = [
            "mosquitto",
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|b| Command::new(b).arg("-h").output().is_ok())
        .expect("mosquitto binary (installed by .ci/services)");
        Command::new(bin)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto")
    }

    fn wait_up(&mut self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private mosquitto did not start");
    }

    /// SIGTERM (Mosquitto saves its persistence file), then start it again.
    pub fn restart(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
        self.child = Broker::spawn(&self.conf);
        self.wait_up();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
