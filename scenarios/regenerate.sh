#!/usr/bin/env bash
# Regenerate every bundled scenario from its seed; the result is byte-for-byte what is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
gen() { python -m aiops scenario generate "$@"; }
gen bad-deploy        --seed 1 --out scenarios/checkout-bad-deploy
gen traffic-surge     --seed 2 --out scenarios/search-traffic-surge
gen datastore-down    --seed 3 --out scenarios/postgres-down
gen latency-injection --seed 4 --out scenarios/payments-latency-injection
gen memory-leak       --seed 5 --out scenarios/cart-memory-leak
gen model-drift       --seed 6 --out scenarios/ranker-model-drift
gen quiet-seasonal    --seed 7 --out scenarios/quiet-seasonal-peak
gen quiet-bursts      --seed 8 --out scenarios/quiet-benign-bursts
