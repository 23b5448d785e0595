// Package orchestrator runs fleetcert's operations over a fleet: it
// connects to nodes, gathers their facts, and drives each cluster through
// an ordered list of phases with gates, a lock, resumable run state and
// dry-run, then reports what happened.
//
// It has three layers, each using only the ones below it:
//
//   - The fleet engine (fleet.go, report.go, fanout.go): RunFleet takes an
//     Operation and a rollout.Plan and runs clusters wave by wave, within
//     the failure budget and the maintenance window, at most Concurrency
//     at once, and collects the FleetReport. It knows nothing of k3s; the
//     plan itself is made by package rollout.
//   - Cluster operations, one file each with a RunCluster whose doc
//     comment lists its steps: RotateCA and RotateSAKey (rotateca.go,
//     rotateca_material.go, gates.go), RotateLeaf (rotateleaf.go). What
//     they share is in clusterop.go (lock, run state, restarting nodes in
//     batches behind gates, cleanup), preflight.go (checks) and phases.go
//     (the phase runner and Wet, through which every change passes).
//     Check (check.go) and StatusOf (status.go) are the read-only ones.
//   - Node primitives: connecting and reading facts (connect.go), the
//     lock (lock.go), the run state (state.go), remote steps such as
//     staging and restarting (nodeops.go), probes (probe.go) and the one
//     wait loop (gate.go).
//
// A new operation is a type with Command and RunCluster, built from these
// phases (docs/architecture.md).
package orchestrator
