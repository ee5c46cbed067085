// Turns scripts/bench's results (one JSON line per `baton-bench` run, tagged with
// system, round and step) into the comparison: each system's median over its rounds,
// baton's ratio to the peer and to the floor (bench/floor: what the figure costs at the
// least), and whether issue 14's targets are met (against the peer, the floor, or as
// an absolute figure).
//
//   node bench/report.mjs RESULTS.jsonl                  prints the table
//   node bench/report.mjs RESULTS.jsonl DOC.md CHART.svg also rewrites DOC.md between
//                                                        its bench markers, and CHART.svg
import { readFileSync, statSync, writeFileSync } from 'node:fs';

const [resultsPath, docPath, chartPath] = process.argv.slice(2);
if (!resultsPath) {
  console.error('usage: node bench/report.mjs RESULTS.jsonl [DOC.md CHART.svg]');
  process.exit(2);
}
const runs = readFileSync(resultsPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

const median = (xs) => {
  const v = xs.filter((x) => typeof x === 'number').sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};

// The highest fan-out a round sustained: offered deliveries per second (senders x rate x
// other clients) of its highest ladder step with every message delivered and p99 < 100 ms.
const ladderBest = (system, round) => {
  const ok = runs.filter(
    (r) => r.system === system && r.round === round && r.step === 'ladder' &&
      r.lost === 0 && r.unanswered === 0 && r.delivery_p99_ms !== null && r.delivery_p99_ms < 100,
  );
  if (ok.length === 0) return null;
  return Math.max(...ok.map((r) => r.senders * r.rate * (r.clients - 1)));
};

const rounds = (system) => [...new Set(runs.filter((r) => r.system === system).map((r) => r.round))];
// A figure of each run (a field, or a function of the run) and its median over the rounds.
const figure = (system, step, key) =>
  median(runs.filter((r) => r.system === system && r.step === step).map((r) => (typeof key === 'function' ? key(r) : r[key])));
// Server CPU per 1000 delivered split into the kernel's part (stime: system calls, and on
// loopback the TCP path into the receiving process) and the process's own (utime).
const perThousand = (seconds) => (r) =>
  r.delivered > 0 && typeof seconds(r) === 'number' ? (seconds(r) * 1e6) / r.delivered : null;
const kernelPart = perThousand((r) => r.server_kernel_cpu_s);
const userPart = perThousand((r) => (typeof r.server_kernel_cpu_s === 'number' ? r.server_cpu_s - r.server_kernel_cpu_s : null));

// What is compared, how, and issue 14's targets: for baton / peer (`target`), for
// baton / floor (`floorTarget`), and for baton's own figure (`limit`); a figure meets
// its targets when it meets every one it has.
const metrics = [
  { name: 'CPU per 1000 delivered, one big room', step: 'fanout', key: 'cpu_ms_per_1000_delivered', unit: 'CPU-ms', better: 'lower', target: 0.25, floorTarget: 1.5 },
  { name: 'CPU per 1000 delivered, small rooms', step: 'rooms', key: 'cpu_ms_per_1000_delivered', unit: 'CPU-ms', better: 'lower', target: 0.25 },
  { name: 'memory per idle connection', step: 'idle', key: 'kib_per_idle_connection', unit: 'KiB', better: 'lower', floorTarget: 4, limit: 8 },
  { name: 'highest fan-out with delivery p99 < 100 ms', step: 'ladder', unit: 'deliveries/s', better: 'higher', target: 4,
    value: (system) => median(rounds(system).map((round) => ladderBest(system, round))) },
  { name: 'persisted messages per second (ack after commit)', step: 'persist', key: 'acks_per_s', unit: 'acks/s', better: 'higher', target: 15 },
];
const info = [
  { name: 'big room: kernel part of the CPU per 1000 delivered', step: 'fanout', key: kernelPart, unit: 'CPU-ms' },
  { name: 'big room: user-space part', step: 'fanout', key: userPart, unit: 'CPU-ms' },
  { name: 'small rooms: kernel part of the CPU per 1000 delivered', step: 'rooms', key: kernelPart, unit: 'CPU-ms' },
  { name: 'small rooms: user-space part', step: 'rooms', key: userPart, unit: 'CPU-ms' },
  { name: 'big room delivery p50', step: 'fanout', key: 'delivery_p50_ms', unit: 'ms' },
  { name: 'big room delivery p99', step: 'fanout', key: 'delivery_p99_ms', unit: 'ms' },
  { name: 'persist ack p50', step: 'persist', key: 'ack_p50_ms', unit: 'ms' },
  { name: 'storm: reconnects that recovered', step: 'storm', key: 'recovered', unit: '' },
  { name: 'storm: close to recovered p50', step: 'storm', key: 'reconnect_p50_ms', unit: 'ms' },
  { name: 'storm: close to recovered p99', step: 'storm', key: 'reconnect_p99_ms', unit: 'ms' },
  { name: 'storm: lost', step: 'storm', key: 'lost', unit: '' },
];

const fmt = (x) => (x === null || x === undefined ? 'n/a' : Number.isInteger(x) ? String(x) : x.toFixed(x < 10 ? 2 : 1));
const rows = metrics.map((m) => {
  const value = m.value ?? ((system) => figure(system, m.step, m.key));
  const baton = value('baton');
  const peer = value('peer');
  const floor = value('floor');
  const ratio = baton !== null && peer !== null && peer !== 0 ? baton / peer : null;
  const floorRatio = baton !== null && floor !== null && floor !== 0 ? baton / floor : null;
  const within = (x, t) => (m.better === 'lower' ? x <= t : x >= t);
  const checks = [
    m.target === undefined ? null : ratio === null ? undefined : within(ratio, m.target),
    m.floorTarget === undefined ? null : floorRatio === null ? undefined : floorRatio <= m.floorTarget,
    m.limit === undefined ? null : baton === null ? undefined : within(baton, m.limit),
  ].filter((c) => c !== null);
  const met = checks.includes(undefined) ? null : checks.every(Boolean);
  // How many times better baton is (> 1: better), for the chart.
  const advantage = ratio === null || ratio === 0 ? null : m.better === 'lower' ? 1 / ratio : ratio;
  const goal = m.target === undefined ? null : m.better === 'lower' ? 1 / m.target : m.target;
  return { ...m, baton, peer, floor, ratio, floorRatio, met, advantage, goal };
});

// The ladder is meant to find where a system stops keeping up; every other run must deliver everything.
const lossCheck = runs.filter((r) => r.step !== 'ladder' && (r.lost > 0 || r.ack_errors > 0 || r.closed_early > 0));
const ratioText = (x) => (x === null ? 'n/a' : x.toFixed(3));
const targetText = (r) => {
  const sign = r.better === 'lower' ? '≤' : '≥';
  return [
    r.target === undefined ? null : `${sign} ${r.target} peer`,
    r.floorTarget === undefined ? null : `≤ ${r.floorTarget} floor`,
    r.limit === undefined ? null : `${sign} ${r.limit} ${r.unit}`,
  ].filter(Boolean).join(', ');
};
// The floor runs idle, fanout and rooms only: its cells are blank for the other steps.
const floorSteps = new Set(runs.filter((r) => r.system === 'floor').map((r) => r.step));
const table = [
  '| figure | baton | peer | floor | baton / peer | target | met | baton / floor |',
  '|---|---|---|---|---|---|---|---|',
  ...rows.map((r) =>
    `| ${r.name} (${r.unit}, ${r.better} is better) | ${fmt(r.baton)} | ${fmt(r.peer)} | ${floorSteps.has(r.step) ? fmt(r.floor) : ''} | ` +
    `${ratioText(r.ratio)} | ${targetText(r)} | ${r.met === null ? 'n/a' : r.met ? 'yes' : '**no**'} | ` +
    `${floorSteps.has(r.step) ? ratioText(r.floorRatio) : ''} |`),
  ...info.map((m) => {
    const floor = floorSteps.has(m.step) ? fmt(figure('floor', m.step, m.key)) : '';
    return `| ${m.name}${m.unit ? ` (${m.unit})` : ''} | ${fmt(figure('baton', m.step, m.key))} | ${fmt(figure('peer', m.step, m.key))} | ${floor} | | | | |`;
  }),
].join('\n');

console.log(table);
if (lossCheck.length > 0) {
  console.log(`\nWARNING: ${lossCheck.length} run(s) lost messages, had ack errors or closed early:`);
  for (const r of lossCheck) console.log(JSON.stringify(r));
}

// Losing an acked message is a failure whatever the timings: the exit status says so
// (after the files are written, so the evidence is kept).
process.exitCode = lossCheck.length > 0 ? 1 : 0;
if (!docPath) process.exit();

const BEGIN = '<!-- bench:begin (written by scripts/bench; edit outside the markers) -->';
const END = '<!-- bench:end -->';
// When the runs ended: the results file's last write.
const when = statSync(resultsPath).mtime.toISOString().slice(0, 16).replace('T', ' ');
const systems = ['baton', 'peer', 'floor'];
const section = [
  BEGIN,
  `Measured ${when} UTC by \`scripts/bench\` on this machine (${runs.length} runs, ` +
    `${Math.max(...runs.map((r) => r.round))} rounds, A B C A B C). Medians over the rounds; a ratio is baton's over the peer's or the floor's ` +
    '(bench/floor, a minimal in-memory Rust server of the contract: idle, fanout and rooms only).',
  '',
  table,
  '',
  lossCheck.length === 0
    ? 'Every run outside the ladder delivered every acked message (lost 0, ack errors 0, no connection closed early).'
    : `**${lossCheck.length} run(s) lost messages, had ack errors or closed early** (see the raw lines).`,
  '',
  `![baton's advantage over the peer per figure, with the targets](${chartPath.split('/').pop()})`,
  '',
  '<details><summary>Raw figures: one JSON line per run</summary>',
  '',
  '```',
  ...systems.flatMap((s) => runs.filter((r) => r.system === s).map((r) => JSON.stringify(r))),
  '```',
  '',
  '</details>',
  END,
].join('\n');

const doc = readFileSync(docPath, 'utf8');
const start = doc.indexOf(BEGIN);
const end = doc.indexOf(END);
if (start < 0 || end < 0) {
  console.error(`${docPath} has no bench markers; add the two lines\n${BEGIN}\n${END}`);
  process.exit(1);
}
writeFileSync(docPath, doc.slice(0, start) + section + doc.slice(end + END.length));
writeFileSync(chartPath, chart(rows));
console.log(`\nwrote ${docPath} and ${chartPath}`);

// A horizontal bar per figure: how many times better baton is than the peer, on a log
// scale from 0.1x to 100x, with the target as a mark.
function chart(rows) {
  const W = 760, rowH = 46, left = 330, right = 30, top = 60;
  const H = top + rows.length * rowH + 40;
  const span = W - left - right;
  const x = (v) => left + ((Math.log10(Math.min(Math.max(v, 0.1), 100)) + 1) / 3) * span;
  const esc = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="13">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">baton vs Node.js Socket.IO peer: times better (log scale)</text>`,
  ];
  for (const t of [0.1, 1, 10, 100]) {
    parts.push(`<line x1="${x(t)}" y1="${top - 8}" x2="${x(t)}" y2="${H - 30}" stroke="${t === 1 ? '#555' : '#ddd'}"/>`);
    parts.push(`<text x="${x(t)}" y="${H - 12}" text-anchor="middle" fill="#555">${t}x</text>`);
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    parts.push(`<text x="${left - 10}" y="${y + 20}" text-anchor="end">${esc(r.name)}</text>`);
    if (r.advantage !== null) {
      const a = r.advantage;
      const x0 = x(1), x1 = x(a);
      const colour = r.met ? '#2e7d32' : '#c62828';
      parts.push(`<rect x="${Math.min(x0, x1)}" y="${y + 6}" width="${Math.max(Math.abs(x1 - x0), 1)}" height="20" fill="${colour}"/>`);
      // The label right of the bar and of the target mark, so that neither hides it.
      const labelX = Math.max(x0, x1, r.goal === null ? x0 : x(r.goal)) + 6;
      parts.push(`<text x="${labelX}" y="${y + 21}" fill="${colour}">${a.toFixed(a < 10 ? 2 : 1)}x</text>`);
    } else {
      parts.push(`<text x="${x(1) + 6}" y="${y + 21}" fill="#555">n/a</text>`);
    }
    if (r.goal !== null) {
      parts.push(`<line x1="${x(r.goal)}" y1="${y + 2}" x2="${x(r.goal)}" y2="${y + 30}" stroke="black" stroke-width="2" stroke-dasharray="3,2"/>`);
    }
  });
  parts.push(`<text x="${left}" y="${top - 14}" fill="#555">bars: measured (green: targets met, red: not); dashed: the target against the peer</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
