//! The daemon's signal handling: SIGHUP reloads or rejects the configuration without
//! stopping, SIGTERM drains and exits cleanly, and workers keep running.

use std::time::Duration;

use spillway_tests::{Daemon, DaemonOptions, RedisServer, serial_blocking};

#[test]
fn reload_applies_valid_and_rejects_invalid_config() {
    let _serial = serial_blocking();
    let redis = RedisServer::start().unwrap();
    let mut daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    assert!(
        daemon.wait_log("daemon started", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    let original = std::fs::read_to_string(&daemon.config_path).unwrap();

    std::fs::write(
        &daemon.config_path,
        original.replace("max_workers = 2", "max_workers = 0"),
    )
    .unwrap();
    daemon.signal("HUP");
    assert!(
        daemon.wait_log("reload rejected", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("backend.local.max_workers"),
        "{}",
        daemon.log()
    );
    assert!(daemon.is_running());

    let changed = original
        .replace("max_workers = 2", "max_workers = 3")
        .replace(
            "reconcile_interval_secs = 0.3",
            "reconcile_interval_secs = 0.4",
        );
    std::fs::write(&daemon.config_path, changed).unwrap();
    daemon.signal("HUP");
    assert!(
        daemon.wait_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("max_workers=3"), "{log}");
    assert!(
        log.contains("daemon.reconcile_interval_secs"),
        "restart-only key not reported:\n{log}"
    );
    assert!(daemon.is_running());
}

#[test]
fn sigterm_drains_and_exits() {
    let _serial = serial_blocking();
    let redis = RedisServer::start().unwrap();
    let mut daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    assert!(
        daemon.wait_log("daemon started", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );

    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));

    let log = daemon.log();
    assert!(
        status.is_some_and(|status| status.success()),
        "status {status:?}, log:\n{log}"
    );
    assert!(log.contains("intake stopped"), "{log}");
    assert!(log.contains("daemon stopped"), "{log}");
}
