//! The CI-reduced fault matrix (issue 11): every scenario of
//! [`understudy_tests::faults::scenarios`] once, with the seed of
//! `UNDERSTUDY_FAULT_SEED` (default [`understudy_tests::faults::DEFAULT_SEED`]),
//! against the namespace cluster (root only). Each test fails listing its
//! violations. The full matrix (5 seeds each, a table): the `fault-matrix` bin.
//!
//! `cargo test -p understudy-tests --test fault_matrix -- --test-threads=1`

use understudy_tests::faults::{run_one_seed, scenarios};

/// One test per scenario, and every scenario has one.
macro_rules! matrix {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                run_one_seed($name);
            }
        )*

        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$($name),*];
            for sc in scenarios() {
                assert!(tested.contains(&sc.name), "scenario {} has no test", sc.name);
            }
            assert_eq!(tested.len(), scenarios().len());
        }
    };
}

matrix! {
    fs_kill => "fs-kill",
    fs_freeze_local_fence => "fs-freeze-local-fence",
    fs_freeze_ec2_fence => "fs-freeze-ec2-fence",
    fs_cut_from_controllers => "fs-cut-from-controllers",
    replication_cut => "replication-cut",
    backup_kill => "backup-kill",
    leader_kill_during_failover => "leader-kill-during-failover",
    no_quorum => "no-quorum",
    flapping_link => "flapping-link",
    short_blips => "short-blips",
    replication_cut_then_fs_dies => "replication-cut-then-fs-dies",
    backup_dies_then_fs_dies => "backup-dies-then-fs-dies",
    backup_disk_full => "backup-disk-full",
    agent_restart_during_promote => "agent-restart-during-promote",
    leader_partitioned => "leader-partitioned",
    leader_kill_during_rebuild => "leader-kill-during-rebuild",
    clock_jump => "clock-jump",
    ec2_api_slow_during_fence => "ec2-api-slow-during-fence",
    ec2_api_failing_during_fence => "ec2-api-failing-during-fence",
}
