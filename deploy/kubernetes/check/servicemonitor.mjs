// The ServiceMonitor half of the Kubernetes check (scripts/check-kubernetes): the
// chart's ServiceMonitors, rendered by check.py into JSON files given as arguments,
// validated against the Prometheus Operator's CRD schema as packaged by
// @kubernetes-models/prometheus-operator (generated from the operator's Go API
// types; the Kubernetes schemas check.py uses do not cover CRDs). That schema
// checks types, required fields and patterns (an interval of "15 seconds" fails),
// but, like the API server's own pruning, not unknown fields. Any other kind in
// the files is an error: nothing may go unchecked.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

let checked = 0;
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const obj of JSON.parse(readFileSync(file, "utf8"))) {
    const what = `${file}: ${obj.kind} ${obj.metadata?.name}`;
    if (obj.apiVersion !== "monitoring.coreos.com/v1" || obj.kind !== "ServiceMonitor") {
      console.error(`servicemonitor.mjs: ${what}: no schema here for ${obj.apiVersion} ${obj.kind}`);
      failed++;
      continue;
    }
    try {
      new ServiceMonitor(obj).validate();
      checked++;
    } catch (e) {
      console.error(`servicemonitor.mjs: ${what} does not validate: ${e.message}`);
      failed++;
    }
  }
}
console.log(`ServiceMonitor schema (prometheus-operator's CRD): ${checked} valid, ${failed} faulty`);
process.exit(failed ? 1 : 0);
