//! The Prometheus recorder, installed once per process; `/metrics` renders it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Sub-microsecond work (one fix against the zone index takes ~100 ns).
const FAST_SECONDS: &[f64] = &[
    5e-8, 1e-7, 2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3,
];
const ROWS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The process-wide handle (installs the recorder on first use).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                // Full names are matched before suffixes.
                .set_buckets_for_metric(
                    Matcher::Full("fleetgate_zone_evaluation_seconds".into()),
                    FAST_SECONDS,
                )
                .expect("static buckets")
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .expect("static buckets")
                .set_buckets_for_metric(Matcher::Suffix("_rows".into()), ROWS)
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            // A second daemon in the same process (tests) shares the first recorder.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "fleetgate_archive_passes_total",
        "Archive passes (partitions, compaction, expiry), by result"
    );
    describe_histogram!(
        "fleetgate_archive_pass_seconds",
        Unit::Seconds,
        "Duration of one archive pass"
    );
    describe_counter!(
        "fleetgate_archive_compacted_days_total",
        "Closed device-days packed into chunks"
    );
    describe_counter!(
        "fleetgate_archive_packed_positions_total",
        "Hot positions moved into chunks"
    );
    describe_counter!(
        "fleetgate_archive_duplicates_total",
        "Positions found in both tiers at compaction (kept once)"
    );
    describe_counter!(
        "fleetgate_archive_summaries_total",
        "Daily vehicle summaries computed and stored"
    );
    describe_counter!(
        "fleetgate_archive_expired_days_total",
        "Day partitions of positions dropped by retention"
    );
    describe_counter!(
        "fleetgate_archive_expired_rows_total",
        "Rows deleted by retention, by table"
    );
    describe_counter!(
        "fleetgate_archive_errors_total",
        "Archive pass steps that failed, by step"
    );
    describe_gauge!(
        "fleetgate_archive_retained_seconds",
        "Age of the oldest retained day of positions"
    );
    describe_gauge!(
        "fleetgate_immobiliser_blocked_vehicles",
        "Vehicles blocked, by standing reason"
    );
    describe_gauge!(
        "fleetgate_immobiliser_pending_blocks",
        "Blocks waiting for safe conditions or on their way"
    );
    describe_counter!(
        "fleetgate_immobiliser_commands_total",
        "Engine commands finished, by intent and outcome"
    );
    describe_counter!(
        "fleetgate_immobiliser_commands_sent_total",
        "Engine commands written to a device"
    );
    describe_counter!(
        "fleetgate_immobiliser_force_refused_total",
        "Forced blocks refused (allow_force off)"
    );
    describe_histogram!(
        "fleetgate_immobiliser_fix_to_command_seconds",
        Unit::Seconds,
        "Fix received to command on the wire"
    );
    describe_counter!(
        "fleetgate_cluster_forwarded_total",
        "Immobiliser requests forwarded to the instance holding the tracker, by outcome"
    );
    describe_counter!(
        "fleetgate_cluster_served_total",
        "Requests forwarded to this instance by others, by type"
    );
    describe_gauge!("fleetgate_crm_outbox_events", "CRM outbox events by status");
    describe_counter!(
        "fleetgate_crm_outbox_delivered_total",
        "CRM events delivered, by kind"
    );
    describe_counter!(
        "fleetgate_crm_outbox_retries_total",
        "CRM delivery attempts that failed and will be retried"
    );
    describe_counter!(
        "fleetgate_crm_outbox_throttled_total",
        "CRM answers that asked us to slow down"
    );
    describe_counter!(
        "fleetgate_crm_outbox_dead_total",
        "CRM events moved to the dead-letter list"
    );
    describe_histogram!(
        "fleetgate_crm_outbox_latency_seconds",
        Unit::Seconds,
        "CRM event creation to delivery"
    );
    describe_counter!(
        "fleetgate_crm_events_total",
        "Events written to the CRM outbox, by kind"
    );
    describe_counter!(
        "fleetgate_crm_events_skipped_total",
        "CRM events not written, by kind"
    );
    describe_counter!(
        "fleetgate_crm_events_dropped_total",
        "Pending CRM events dropped unsent, by cause (handed_back)"
    );
    describe_gauge!(
        "fleetgate_crm_auth_failed",
        "1 while the CRM refuses fleetgate's credentials; the connector pauses"
    );
    describe_counter!(
        "fleetgate_crm_auth_failures_total",
        "Requests the CRM refused for credentials"
    );
    describe_counter!(
        "fleetgate_crm_oauth_refreshes_total",
        "amoCRM OAuth access-token refreshes, by result"
    );
    describe_counter!(
        "fleetgate_crm_inbound_total",
        "CRM webhooks received, by CRM and outcome (accepted, duplicate, ignored, refused, bad_request, not_configured)"
    );
    describe_counter!(
        "fleetgate_crm_inbound_actions_total",
        "What inbound CRM webhooks did, by CRM, action and outcome"
    );
    describe_counter!(
        "fleetgate_crm_balance_checks_total",
        "Periodic balance pulls from the CRM"
    );
    describe_counter!(
        "fleetgate_crm_balance_check_errors_total",
        "Balance pulls that failed"
    );
    describe_counter!(
        "fleetgate_crm_reason_errors_total",
        "Block reasons the CRM rules could not hand to the immobiliser"
    );
    describe_counter!(
        "fleetgate_crm_step_timeouts_total",
        "CRM rule steps abandoned because storage did not answer in time"
    );
    describe_gauge!(
        "fleetgate_ingest_connections",
        "Open tracker connections by protocol"
    );
    describe_counter!(
        "fleetgate_ingest_messages_total",
        "Frames decoded, by protocol and message kind"
    );
    describe_counter!(
        "fleetgate_ingest_records_total",
        "Positions decoded, by protocol"
    );
    describe_counter!(
        "fleetgate_ingest_bytes_total",
        Unit::Bytes,
        "Bytes received from trackers"
    );
    describe_counter!(
        "fleetgate_ingest_decode_errors_total",
        "Frames that failed to decode, by protocol and reason"
    );
    describe_counter!(
        "fleetgate_ingest_accept_errors_total",
        "accept() failures on a tracker listener (e.g. out of file descriptors)"
    );
    describe_counter!(
        "fleetgate_ingest_connections_refused_total",
        "Connections refused by a limit"
    );
    describe_counter!(
        "fleetgate_ingest_timeouts_total",
        "Connections closed by handshake or idle timeout"
    );
    describe_counter!(
        "fleetgate_ingest_identity_conflicts_total",
        "Another session or datagram claimed a device a live session holds (kind: second_connection, udp, relogin)"
    );
    describe_counter!(
        "fleetgate_ingest_malformed_ids_total",
        "Unknown devices not registered because their id does not match the protocol's form"
    );
    describe_counter!(
        "fleetgate_ingest_devices_refused_total",
        "Unknown devices refused (register_unknown = false)"
    );
    describe_counter!(
        "fleetgate_ingest_unidentified_total",
        "Positions sent before the device identified itself"
    );
    describe_histogram!(
        "fleetgate_ingest_ack_seconds",
        Unit::Seconds,
        "Frame decoded to ack sendable (commit included)"
    );
    describe_counter!(
        "fleetgate_pipeline_rejects_total",
        "Fixes dropped by the filters, by reason"
    );
    describe_counter!(
        "fleetgate_pipeline_clock_corrected_total",
        "Fixes whose time was corrected for a tracker clock running whole hours ahead"
    );
    describe_counter!(
        "fleetgate_pipeline_records_total",
        "Fixes accepted by the pipeline"
    );
    describe_histogram!(
        "fleetgate_storage_commit_seconds",
        Unit::Seconds,
        "Duration of one group commit"
    );
    describe_histogram!(
        "fleetgate_storage_batch_rows",
        Unit::Count,
        "Positions per group commit"
    );
    describe_counter!(
        "fleetgate_storage_rows_written_total",
        "Positions committed"
    );
    describe_counter!(
        "fleetgate_storage_commit_errors_total",
        "Failed group commits"
    );
    describe_gauge!(
        "fleetgate_storage_free_bytes",
        "Free bytes on the SQLite database's filesystem (read at most once a second)"
    );
    describe_counter!(
        "fleetgate_storage_low_space_refusals_total",
        "Commits refused because free disk space is below [storage] min_free_mb"
    );
    describe_gauge!(
        "fleetgate_storage_healthy",
        "1 while the writer's commits succeed, 0 while they fail"
    );
    describe_counter!(
        "fleetgate_storage_connections_replaced_total",
        "SQLite writer connections replaced because a failed transaction was left open on them"
    );
    describe_counter!(
        "fleetgate_storage_commit_retries_total",
        "Group commits retried after a transient storage error"
    );
    describe_gauge!(
        "fleetgate_storage_positions",
        "Positions stored, both tiers (refreshed every 5 minutes)"
    );
    describe_gauge!(
        "fleetgate_storage_bytes",
        "Bytes on disk of the position tables, by tier (hot rows, packed chunks)"
    );
    describe_counter!(
        "fleetgate_storage_compacted_positions_total",
        "Hot rows packed into chunks by compaction"
    );
    describe_counter!(
        "fleetgate_storage_partitions_created_total",
        "PostgreSQL day partitions created (ahead, or on demand by the group commit)"
    );
    describe_counter!(
        "fleetgate_storage_chunk_errors_total",
        "Position chunks that failed to decode (the read fails and names the device and day)"
    );
    describe_counter!(
        "fleetgate_storage_timeouts_total",
        "Storage calls abandoned past their deadline ([storage] statement_timeout_s or bulk_timeout_s; the writer's commit attempts past 20 s), by call"
    );
    describe_counter!(
        "fleetgate_storage_connections_abandoned_total",
        "PostgreSQL connections closed on release because they did not answer a ping within [storage] statement_timeout_s"
    );
    describe_counter!(
        "fleetgate_ingest_limit_violations_total",
        "Tracker connections closed or refused by a limit, by protocol and limit"
    );
    describe_counter!(
        "fleetgate_ingest_udp_dropped_total",
        "UDP datagrams or frames dropped unacked: over the source's rate (rate_limited) or the listener's queue full (queue_full)"
    );
    describe_gauge!(
        "fleetgate_ingest_udp_sources",
        "UDP sources (ip:port) whose sessions a listener keeps, by protocol"
    );
    describe_counter!(
        "fleetgate_ingest_udp_sources_evicted_total",
        "UDP sources forgotten because the table was full (limits.udp_max_sources), least recent first"
    );
    describe_counter!(
        "fleetgate_api_limit_violations_total",
        "API requests refused by a limit (max_body_bytes)"
    );
    describe_counter!(
        "fleetgate_devices_registered_total",
        "Unknown devices auto-registered"
    );
    describe_counter!(
        "fleetgate_api_forbidden_total",
        "API requests refused with 403 before reaching a route, by reason (read_only_token)"
    );
    describe_counter!(
        "fleetgate_api_errors_total",
        "API error responses by status"
    );
    describe_gauge!(
        "fleetgate_mqtt_connected",
        "1 while the MQTT source is connected to the broker"
    );
    describe_counter!(
        "fleetgate_mqtt_connection_errors_total",
        "MQTT broker connection errors (each followed by a reconnect with backoff)"
    );
    describe_counter!(
        "fleetgate_mqtt_messages_total",
        "MQTT messages decoded, by message kind"
    );
    describe_gauge!(
        "fleetgate_mqtt_buffered_messages",
        "MQTT messages received and waiting for the processor"
    );
    describe_counter!(
        "fleetgate_mqtt_abandoned_total",
        "MQTT messages left unacknowledged on purpose (the broker redelivers them), by reason"
    );
    describe_counter!(
        "fleetgate_mqtt_dropped_total",
        "MQTT messages acknowledged without storing, by reason"
    );
    describe_histogram!(
        "fleetgate_mqtt_ack_seconds",
        Unit::Seconds,
        "MQTT message received to PUBACK sendable (commit and retries included)"
    );
    describe_counter!(
        "fleetgate_mqtt_commands_sent_total",
        "Device commands published over MQTT"
    );
    describe_gauge!(
        "fleetgate_mqtt_device_sessions",
        "MQTT devices with a live command session (published within mqtt.session_idle_s)"
    );
    describe_gauge!(
        "fleetgate_zone_vehicles_outside_service_area",
        "Vehicles whose debounced state is outside the service area"
    );
    describe_counter!(
        "fleetgate_zone_evaluations_total",
        "Fixes evaluated against the zone index"
    );
    describe_histogram!(
        "fleetgate_zone_evaluation_seconds",
        Unit::Seconds,
        "Zone evaluation time per fix (batch time / fixes)"
    );
    describe_counter!(
        "fleetgate_zone_events_total",
        "Confirmed zone events by type (enter, exit) and zone kind"
    );
    describe_counter!(
        "fleetgate_zone_store_errors_total",
        "Zone membership changes or events that could not be stored"
    );
    describe_counter!(
        "fleetgate_zone_step_timeouts_total",
        "Zone steps abandoned because storage did not answer in time"
    );
    describe_gauge!(
        "fleetgate_zone_files_broken",
        "Zone files left out at start (unreadable, invalid or a duplicate name); the others are in force"
    );
    describe_counter!(
        "fleetgate_zone_changes_refused_total",
        "API zone changes refused by the guards (geometry, swapped, mass_exit); nothing stored"
    );
    describe_counter!(
        "fleetgate_zone_changes_forced_total",
        "API zone changes applied with force=true past the max_exit_share guard"
    );
    describe_histogram!(
        "fleetgate_ops_pipeline_probe_seconds",
        Unit::Seconds,
        "Watchdog liveness probe: round trip through every shard and the writer"
    );
    describe_counter!(
        "fleetgate_ops_pipeline_probe_failures_total",
        "Liveness probes that timed out (the systemd watchdog ping is withheld)"
    );
    describe_counter!(
        "fleetgate_zone_reloads_total",
        "Zone reloads on SIGHUP, by result (ok, error)"
    );
    describe_counter!(
        "fleetgate_ops_reloads_total",
        "Configuration reloads (SIGHUP) by result"
    );
}
