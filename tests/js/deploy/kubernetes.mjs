// What Kubernetes would do in a rolling update of the Helm chart's Deployment
// (deploy/kubernetes/baton), played on the deploy test's local instances: the pod's
// timings and hook are read from the chart as rendered by scripts/check-kubernetes
// (target/kubernetes/defaults.json), and carried out as the kubelet, the Deployment
// controller and the endpoints would:
//
//   - a pod's startup probe (/healthz), then its readiness probe (/readyz), each
//     every periodSeconds with its thresholds; the load balancer follows readiness:
//     a pod is in it only while ready (the endpoints), and out of it (no new
//     connections; those it has are kept) from the moment it is marked
//     terminating, whatever its probe says;
//   - the rollout (maxSurge 1, maxUnavailable 0): one new pod, and once it has been
//     ready for minReadySeconds, one old pod marked terminating, while the next new
//     pod starts;
//   - an old pod's termination: its preStop command, the rendered one (its sleep,
//     then `baton drain --wait`), run with the instance's binary and URL in place of
//     the image's; then SIGTERM; SIGKILL at terminationGracePeriodSeconds from the
//     start; meanwhile its /healthz is polled (the liveness probe must never fail).
//
// The cluster's own operations (start an instance, change the load balancer, find a
// pid) are the caller's, passed in as functions.
import { readFileSync } from "node:fs";
import { spawn } from "node:child_process";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
// The status of GET url, or 0 if there was no answer within timeoutMs.
const status = async (url, timeoutMs) => {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
};

/** The baton pod of the rendered chart: what the simulation needs from it. */
export function renderedPod(file) {
  const objects = JSON.parse(readFileSync(file, "utf8"));
  const deployment = objects.find((o) => o.kind === "Deployment");
  if (!deployment) throw new Error(`${file}: no Deployment`);
  const { spec } = deployment;
  const pod = spec.template.spec;
  const container = pod.containers.find((c) => c.name === "baton");
  const probe = (p) => ({
    path: p.httpGet.path,
    periodMs: 1000 * (p.periodSeconds ?? 10),
    timeoutMs: 1000 * (p.timeoutSeconds ?? 1),
    failureThreshold: p.failureThreshold ?? 3,
    successThreshold: p.successThreshold ?? 1,
  });
  const env = Object.fromEntries(container.env.filter((e) => "value" in e).map((e) => [e.name, e.value]));
  return {
    port: container.ports.find((p) => p.name === "http").containerPort,
    startup: probe(container.startupProbe),
    readiness: probe(container.readinessProbe),
    liveness: probe(container.livenessProbe),
    preStop: container.lifecycle.preStop.exec.command,
    graceMs: 1000 * pod.terminationGracePeriodSeconds,
    minReadyMs: 1000 * (spec.minReadySeconds ?? 0),
    maxSurge: spec.strategy.rollingUpdate.maxSurge,
    maxUnavailable: spec.strategy.rollingUpdate.maxUnavailable,
    env,
  };
}

/**
 * The pods of one Deployment on the caller's instances. `ops`:
 *   start(name)    starts the instance (the new pod's container); resolves when it
 *                  has been started
 *   lbAdd(name)    puts it in the load balancer (a ready endpoint)
 *   lbRemove(name) takes it out (no new connections; established ones stay)
 *   urlOf(name), pidOf(name), deleted(name) (marks it deleted: not to be restarted)
 *   transportsOf(name) its clients now (recorded at its deletion)
 *   binary         the baton binary standing in for the image's /usr/local/bin/baton
 *   adminToken     the pods' BATON_ADMIN_TOKEN (the preStop's baton drain needs it)
 *   log(line)
 */
export class Deployment {
  constructor(pod, ops) {
    this.pod = pod;
    this.ops = ops;
    this.pods = new Map(); // name -> { ready, readySince, terminating, timer }
  }

  // The kubelet's probes of `name`: the startup probe until it passes, then the
  // readiness probe; each readiness change moves it in or out of the load balancer.
  probe(name, ready = false) {
    const p = { name, ready, readySince: ready ? Date.now() : null, terminating: false, started: Date.now() };
    this.pods.set(name, p);
    const { startup, readiness } = this.pod;
    const url = this.ops.urlOf(name);
    let startupPassed = ready;
    let startupFailures = 0;
    let failures = 0;
    let successes = 0;
    const tick = async () => {
      if (p.terminating || p.stopped) return;
      if (!startupPassed) {
        const code = await status(url + startup.path, startup.timeoutMs);
        if (code >= 200 && code < 400) startupPassed = true;
        else if (++startupFailures >= startup.failureThreshold) p.failedStartup = true;
        p.timer = setTimeout(tick, startupPassed ? readiness.periodMs : startup.periodMs);
        return;
      }
      const code = await status(url + readiness.path, readiness.timeoutMs);
      if (p.terminating || p.stopped) return;
      if (code >= 200 && code < 400) {
        failures = 0;
        if (!p.ready && ++successes >= readiness.successThreshold) {
          p.ready = true;
          p.readySince = Date.now();
          await this.ops.lbAdd(name);
        }
      } else {
        successes = 0;
        if (p.ready && ++failures >= readiness.failureThreshold) {
          p.ready = false;
          p.readySince = null;
          await this.ops.lbRemove(name);
        }
      }
      p.timer = setTimeout(tick, readiness.periodMs);
    };
    p.timer = setTimeout(tick, ready ? readiness.periodMs : 0);
    return p;
  }

  /** Takes over running, ready instances as the Deployment's current pods. */
  async adopt(names) {
    for (const name of names) {
      await this.ops.lbAdd(name);
      this.probe(name, true);
    }
  }

  /** Creates pod `name`: out of the load balancer until its readiness probe passes. */
  async create(name) {
    await this.ops.lbRemove(name);
    const p = this.probe(name);
    await this.ops.start(name);
    return p;
  }

  // Until `p` has been ready for minReadySeconds without a break (an available pod).
  async available(p, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (!(p.ready && Date.now() - p.readySince >= this.pod.minReadyMs)) {
      if (p.failedStartup) throw new Error(`${p.name} failed its startup probe`);
      if (Date.now() > deadline) throw new Error(`${p.name} not available after ${timeoutMs} ms (ready: ${p.ready})`);
      await sleep(100);
    }
    return { name: p.name, readyAfterMs: p.readySince - p.started, availableAfterMs: Date.now() - p.started };
  }

  /** Deletes pod `name` as Kubernetes would; resolves with what happened. */
  async terminate(name) {
    const p = this.pods.get(name);
    const { ops, pod } = this;
    const start = Date.now();
    const result = { name, healthzChecks: 0, healthzFailures: [] };
    if (p) {
      p.terminating = true;
      clearTimeout(p.timer);
    }
    // Terminating: out of the endpoints at once, and never restarted.
    await ops.lbRemove(name);
    result.transportsAtDeletion = await ops.transportsOf(name);
    ops.deleted(name);
    const pid = ops.pidOf(name);
    if (!pid || !alive(pid)) throw new Error(`${name} is not running`);

    // The liveness endpoint, polled more often than the probe would, while the
    // process lives: it must answer 200 throughout the drain. Once the drain is
    // over the process closes its port and exits: the checks that fail then, with
    // no 200 after them, are its exit (result.healthzAtExit), which the caller
    // holds to be shorter than the liveness probe's patience; a failure followed
    // by a 200 is a failure (result.healthzFailures).
    let watching = true;
    let trailing = [];
    const watch = (async () => {
      while (watching && alive(pid)) {
        const code = await status(ops.urlOf(name) + pod.liveness.path, pod.liveness.timeoutMs);
        if (!alive(pid)) break;
        result.healthzChecks += 1;
        if (code !== 200) {
          trailing.push([Date.now() - start, code]);
        } else {
          result.healthzFailures.push(...trailing);
          trailing = [];
        }
        await sleep(250);
      }
    })();
    // SIGKILL at the end of the grace period.
    const killer = setTimeout(() => {
      if (alive(pid)) {
        result.killedAtGraceEnd = true;
        process.kill(pid, "SIGKILL");
      }
    }, pod.graceMs);

    // The preStop hook: the rendered command, with this instance's binary and URL
    // in place of the image's path and the pod's port.
    const [shell, flag, script] = pod.preStop;
    const image = "/usr/local/bin/baton";
    const podUrl = `http://127.0.0.1:${pod.port}`;
    if (!script.includes(image) || !script.includes(podUrl)) {
      throw new Error(`the chart's preStop no longer names ${image} and ${podUrl}: ${script}`);
    }
    const local = script.replace(image, `'${ops.binary}'`).replace(podUrl, ops.urlOf(name));
    const hook = await new Promise((resolve) => {
      const child = spawn(shell, [flag, local], {
        env: { PATH: process.env.PATH, BATON_ADMIN_TOKEN: ops.adminToken },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      child.stdout.on("data", (d) => (out += d));
      child.stderr.on("data", (d) => (out += d));
      child.on("close", (code) => resolve({ code, out: out.trim() }));
    });
    result.preStopExit = hook.code;
    result.preStopMs = Date.now() - start;
    try {
      result.report = JSON.parse(hook.out.split("\n").at(-1));
    } catch {
      result.preStopOutput = hook.out;
    }
    // Then SIGTERM, if the process is still there (a drain that ran its course has
    // exited by now).
    result.aliveAfterPreStop = alive(pid);
    if (result.aliveAfterPreStop) process.kill(pid, "SIGTERM");
    while (alive(pid)) await sleep(50);
    result.goneAfterMs = Date.now() - start;
    clearTimeout(killer);
    watching = false;
    await watch;
    result.healthzAtExit = {
      failures: trailing.length,
      // From the first unanswered check to the exit.
      spanMs: trailing.length ? result.goneAfterMs - trailing[0][0] : 0,
    };
    this.pods.delete(name);
    return result;
  }

  /**
   * A rolling update with maxSurge 1 / maxUnavailable 0 from the current pods to
   * `fresh` (as many): creates one, waits until it is available, marks one old pod
   * terminating and creates the next; resolves when every old pod is gone.
   */
  async rollOut(fresh) {
    const { maxSurge, maxUnavailable } = this.pod;
    if (maxSurge !== 1 || maxUnavailable !== 0) {
      throw new Error(`the simulation plays maxSurge 1 / maxUnavailable 0; the chart says ${maxSurge} / ${maxUnavailable}`);
    }
    const old = [...this.pods.keys()];
    if (old.length !== fresh.length) throw new Error(`${old.length} pods to replace with ${fresh.length}`);
    const started = [];
    const terminations = [];
    for (const name of fresh) {
      const p = await this.create(name);
      started.push(await this.available(p, 60000 + this.pod.minReadyMs));
      this.ops.log(`kubernetes: ${name} available (ready ${started.at(-1).readyAfterMs} ms after its start); deleting ${old[0]}`);
      terminations.push(this.terminate(old.shift()));
    }
    return { started, terminated: await Promise.all(terminations) };
  }

  /** Stops every probe (the end of the test). */
  stop() {
    for (const p of this.pods.values()) {
      p.stopped = true;
      clearTimeout(p.timer);
    }
  }
}
