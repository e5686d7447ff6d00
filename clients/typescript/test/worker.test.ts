// The TypeScript client against a real `cairn serve` on loopback: a kind with a durable call
// that a retried attempt takes from the record, cancellation reaching the running function, a
// permanent failure, and approvals through the client.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { Client, Permanent, Worker, requestHash, type TaskContext } from "../src/index.js";

const root = resolve(import.meta.dirname, "..", "..", "..", "..");
const bin = process.env.CAIRN_BIN ?? join(root, "target", "debug", "cairn");
let server: ChildProcess;
let url = "";

before(async () => {
  assert.ok(existsSync(bin), `no cairn binary at ${bin}: build it (cargo build -p cairn) or set CAIRN_BIN`);
  const dir = mkdtempSync(join(tmpdir(), "cairn-ts-"));
  server = spawn(bin, ["serve", "--listen", "127.0.0.1:0"], {
    env: { ...process.env, CAIRN_DB: join(dir, "cairn.db"), NO_COLOR: "1" },
    cwd: dir,
    stdio: ["ignore", "ignore", "pipe"],
  });
  const lines = createInterface({ input: server.stderr! });
  url = await new Promise<string>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("cairn serve did not start")), 20_000);
    lines.on("line", (line) => {
      const found = line.match(/listening on (http:\/\/\S+)/);
      if (found?.[1]) {
        clearTimeout(timer);
        ok(found[1]);
      }
    });
  });
});

after(() => {
  server.kill("SIGKILL");
});

test("a kind's durable call is recorded once and a retried attempt takes it from the record", async () => {
  const sent: string[] = [];
  const worker = new Worker({ url, queues: ["ts"], pollMs: 500 });
  worker.kind("notify", async (ctx: TaskContext, input: { to: string }) => {
    const receipt = await ctx.call("send", () => {
      sent.push(input.to);
      return { id: `m-${sent.length}` };
    }, input.to);
    if (ctx.attempt === 1) throw new Error("the process died right after sending");
    return { receipt, attempt: ctx.attempt };
  });
  const running = worker.run();
  const client = new Client(url);
  const definition = {
    name: "ts-notify",
    kinds: { notify: { queue: "ts", retry: { initial_delay: "50ms" } } },
    steps: [{ id: "n", kind: "notify", with: { to: "ada@example.com" } }],
  };
  const run = await client.wait(await client.start(definition));
  worker.stop();
  await running;
  assert.equal(run.status, "COMPLETED");
  assert.deepEqual(run.output.n, { receipt: { id: "m-1" }, attempt: 2 });
  assert.deepEqual(sent, ["ada@example.com"], "the call was made again on the retry");
  assert.throws(() => requestHash("x", [() => 1]), TypeError);
});

test("cancellation reaches the running function and a permanent failure is not retried", async () => {
  let sawCancel = false;
  const worker = new Worker({ url, queues: ["ts-slow"], pollMs: 500, leaseMs: 1_500 });
  worker.kind("spin", async (ctx: TaskContext) => {
    while (!ctx.cancelled) await new Promise((r) => setTimeout(r, 50));
    sawCancel = true;
  });
  worker.kind("picky", () => {
    throw new Permanent("the text is in Klingon");
  });
  const running = worker.run();
  const client = new Client(url);
  const kinds = { spin: { queue: "ts-slow" }, picky: { queue: "ts-slow" } };
  const spinning = await client.start({ name: "ts-spin", kinds, steps: [{ id: "s", kind: "spin" }] });
  for (let i = 0; i < 200 && (await client.run(spinning)).steps[0].status !== "RUNNING"; i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await client.cancel(spinning, "enough");
  for (let i = 0; i < 200 && !sawCancel; i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(sawCancel, "the function never saw the cancellation");
  const picky = await client.wait(await client.start({ name: "ts-picky", kinds, steps: [{ id: "p", kind: "picky" }] }));
  worker.stop();
  await running;
  assert.equal(picky.status, "FAILED");
  assert.equal(picky.steps[0].attempts, 1);
  assert.match(String(picky.steps[0].error_message), /Klingon/);
});

test("the client lists and answers approvals", async () => {
  const client = new Client(url);
  const gated = {
    name: "ts-gated",
    steps: [{ id: "review", kind: "noop", approval: { prompt: "ship it?" } }],
  };
  const id = await client.start(gated);
  for (let i = 0; i < 200 && !(await client.approvals()).some((a) => a.run_id === id); i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await client.approve(id, "review", "fine");
  assert.equal((await client.wait(id)).status, "COMPLETED");
});
