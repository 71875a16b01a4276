"""Guarded remediation: planned actions in, executed / refused / failed actions out.

Layout (pure core, thin async shell)::

    rules.py     rules/actions.yaml: guards and parameters, validated with file:line errors
    ledger.py    durable append-only JSON-lines ledger (fsync, flock) and its pure fold, ActionBook
    guards.py    pure guards: preconditions, silences, maintenance, failure backoff, cooldown,
                 rate limits, concurrency, targets per incident; each refusal names its guard
    core.py      ActionCore: dedup by (incident, type, target), dry run, approval, verification,
                 recovery of in-doubt actions after a crash; returns ledger entries + executions
    executor.py  Executor: writes entries durably, then calls an actuator, then records the result
    kube.py      scale_up (scale subresource) and rollback (``kubectl rollout undo``) via kubernetes_asyncio
    retrain.py   retrain via an HTTP pipeline endpoint, a Kafka message or a Kubernetes Job
    stage.py     ActStage: what the daemon wires (decisions in, tick, HTTP approval routes)
    handover.py  ActJournal: an action's ledger entries, journaled for the next correlator owner (scale-out)
    approve.py   ``aiops approve ID`` / ``aiops approve --list``
    metrics.py   aiops_action_state_changes_total, aiops_action_refusals_total, aiops_actions_in_flight

Nothing executes unless ``act.dry_run`` (env ``AIOPS_ACT__DRY_RUN=false``) and the action type's
``dry_run`` in ``rules/actions.yaml`` are both off. ``deploy/rbac.yaml`` holds the RBAC it needs.
"""
