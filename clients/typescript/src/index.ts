// Cairn's TypeScript client: workers that run your functions as the steps of external kinds
// (durable calls, heartbeats, cancellation), and a small client to start runs, wait for them and
// answer approvals. Node 20+, no dependencies (global fetch).
//
//   const worker = new Worker({ url: "http://127.0.0.1:8080", queues: ["ts-workers"] });
//   worker.kind("render", async (ctx, input) => {
//     const page = await ctx.call("fetch", () => fetchPage(input.url), input.url); // durable
//     return { html: page };
//   });
//   await worker.run();

import { createHash } from "node:crypto";
import { hostname } from "node:os";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** An answer from Cairn that is not a success: its HTTP status, error code and message. */
export class CairnError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown = null,
  ) {
    super(`${status} ${code}: ${message}`);
  }
}

/** Fails the attempt with a class: `transient` (any other error), `timeout` and `rate_limited`
 * are retried under the step's policy; `permanent` and `malformed_output` are not. */
export class TaskFailed extends Error {
  static readonly CLASSES = ["transient", "timeout", "rate_limited", "permanent", "malformed_output"];
  constructor(
    message: string,
    readonly cls: string = "transient",
    readonly retryAfterMs?: number,
  ) {
    super(message);
    if (!TaskFailed.CLASSES.includes(cls)) {
      throw new RangeError(`failure class ${JSON.stringify(cls)} is not one of ${TaskFailed.CLASSES.join(", ")}`);
    }
  }
}

/** A failure retrying cannot fix: the step fails without another attempt. */
export class Permanent extends TaskFailed {
  constructor(message: string) {
    super(message, "permanent");
  }
}

/** Thrown by `ctx.call` and `ctx.check()` once the task was cancelled. */
export class Cancelled extends Error {}

class Http {
  constructor(
    readonly url: string,
    readonly token?: string,
  ) {}

  async request(method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<any> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.token) headers["authorization"] = `Bearer ${this.token}`;
    const answer = await fetch(this.url.replace(/\/$/, "") + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await answer.text();
    if (!answer.ok) {
      let error: { code?: string; message?: string; details?: unknown } = {};
      try {
        error = JSON.parse(text).error ?? {};
      } catch {
        error = { code: "http_error", message: text.slice(0, 500) };
      }
      throw new CairnError(answer.status, error.code ?? "error", error.message ?? "", error.details ?? null);
    }
    return text ? JSON.parse(text) : null;
  }
}

/** Canonical JSON: object keys sorted, no spaces. Refuses what is not JSON. */
function canonical(value: unknown): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`${value} is not JSON`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const entries = Object.keys(value as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(",")}}`;
  }
  throw new TypeError(`a ${typeof value} is not JSON: durable call arguments must be JSON`);
}

/** The hash a durable call is recorded under: SHA-256 of its name and arguments as canonical JSON. */
export function requestHash(name: string, args: unknown[]): string {
  return createHash("sha256").update(canonical([name, args])).digest("hex");
}

export interface Task {
  token: string;
  run_id: string;
  step: string;
  attempt: number;
  kind: string;
  queue: string;
  input: any;
  deadline_ms: number | null;
}

/** What a task's function can see and do. */
export class TaskContext {
  readonly runId: string;
  readonly step: string;
  readonly attempt: number;
  readonly deadlineMs: number | null;
  /** Aborted when the run was cancelled, the attempt superseded or timed out, or the lease lost. */
  readonly signal: AbortSignal;
  private nextCall = 0;

  constructor(
    private readonly http: Http,
    readonly task: Task,
    private readonly abort: AbortController,
  ) {
    this.runId = task.run_id;
    this.step = task.step;
    this.attempt = task.attempt;
    this.deadlineMs = task.deadline_ms;
    this.signal = abort.signal;
  }

  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /** Throws `Cancelled` if the task was cancelled. */
  check(): void {
    if (this.signal.aborted) throw new Cancelled(`task of step ${this.step} was cancelled`);
  }

  /** Makes `fn()` a durable call, identified by its name and `args` (JSON): if an earlier attempt
   * of this step recorded the call at this position with the same name and arguments, its result
   * comes back and `fn` is not called; otherwise `fn` runs and its result (JSON) is recorded
   * before it is returned. Calls must come in the same order in every attempt. */
  async call<T>(name: string, fn: () => T | Promise<T>, ...args: unknown[]): Promise<T> {
    this.check();
    this.nextCall += 1;
    const body: Record<string, unknown> = {
      token: this.task.token,
      n: this.nextCall,
      name,
      request_hash: requestHash(name, args),
    };
    const found = await this.post(body);
    if (found.recorded) return found.result as T;
    const result = await fn();
    body.result = result === undefined ? null : JSON.parse(JSON.stringify(result));
    return (await this.post(body)).result as T;
  }

  private async post(body: Record<string, unknown>): Promise<{ recorded: boolean; result: unknown }> {
    try {
      return await this.http.request("POST", "/v1/workers/calls", body);
    } catch (e) {
      if (e instanceof CairnError && e.code === "stale_token") {
        this.abort.abort();
        throw new Cancelled(e.message);
      }
      if (e instanceof CairnError && e.code === "call_divergence") throw new Permanent(e.message);
      throw e;
    }
  }
}

export type KindFn = (ctx: TaskContext, input: any) => unknown | Promise<unknown>;

export interface WorkerOptions {
  url: string;
  queues: string[];
  token?: string;
  name?: string;
  concurrency?: number;
  leaseMs?: number;
  pollMs?: number;
}

/** Claims tasks of its queues (and of the kinds registered) and runs them, `concurrency` at once. */
export class Worker {
  private readonly http: Http;
  private readonly kinds = new Map<string, KindFn>();
  private stopped = false;
  private running = new Set<Promise<void>>();
  readonly name: string;

  constructor(readonly options: WorkerOptions) {
    this.http = new Http(options.url, options.token);
    this.name = options.name ?? `${hostname()}-${process.pid}`;
  }

  /** Registers `fn` as the code of external kind `name`. */
  kind(name: string, fn: KindFn): this {
    this.kinds.set(name, fn);
    return this;
  }

  /** Stops claiming (after the claim waiting now); tasks running now finish. */
  stop(): void {
    this.stopped = true;
  }

  /** Claims and runs tasks until `stop()`; resolves when the running tasks have settled. */
  async run(): Promise<void> {
    if (this.kinds.size === 0) throw new Error("register at least one kind with worker.kind(NAME, fn) before run()");
    const concurrency = Math.max(1, this.options.concurrency ?? 4);
    let backoff = 100;
    while (!this.stopped) {
      const free = concurrency - this.running.size;
      if (free <= 0) {
        await Promise.race(this.running);
        continue;
      }
      let tasks: Task[] = [];
      try {
        const pollMs = this.options.pollMs ?? 20_000;
        const body = {
          worker: this.name,
          queues: this.options.queues,
          kinds: [...this.kinds.keys()].sort(),
          max_tasks: free,
          wait_ms: pollMs,
          lease_ms: this.options.leaseMs ?? 30_000,
        };
        tasks = (await this.http.request("POST", "/v1/workers/claim", body, pollMs + 30_000)).tasks;
        backoff = 100;
      } catch {
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 5_000);
      }
      for (const task of tasks) {
        const p: Promise<void> = this.runTask(task).finally(() => this.running.delete(p));
        this.running.add(p);
      }
    }
    await Promise.allSettled(this.running);
  }

  private async runTask(task: Task): Promise<void> {
    const abort = new AbortController();
    const ctx = new TaskContext(this.http, task, abort);
    const leaseMs = this.options.leaseMs ?? 30_000;
    const every = Math.max(leaseMs / 3, 200);
    const beat = setInterval(async () => {
      try {
        const answer = await this.http.request("POST", "/v1/workers/heartbeat", { token: task.token, lease_ms: leaseMs }, every);
        if (answer.cancelled) abort.abort();
      } catch {
        // The next beat may get through.
      }
    }, every);
    try {
      const fn = this.kinds.get(task.kind);
      if (!fn) throw new Permanent(`this worker has no kind ${task.kind}`);
      const output = await fn(ctx, task.input);
      if (!ctx.cancelled) {
        await this.settle("/v1/workers/complete", { token: task.token, output: output === undefined ? null : output });
      }
    } catch (e) {
      if (e instanceof Cancelled || ctx.cancelled) return;
      const failure =
        e instanceof TaskFailed
          ? { class: e.cls, message: e.message.slice(0, 4000), retry_after_ms: e.retryAfterMs }
          : { class: "transient", message: `${e instanceof Error ? e.name : "Error"}: ${String((e as Error)?.message ?? e)}`.slice(0, 4000) };
      await this.settle("/v1/workers/fail", { token: task.token, ...failure });
    } finally {
      clearInterval(beat);
    }
  }

  private async settle(path: string, body: Record<string, unknown>): Promise<void> {
    for (const [n, wait] of [0, 500, 1_000, 2_000, 4_000].entries()) {
      await new Promise((r) => setTimeout(r, wait));
      try {
        await this.http.request("POST", path, body);
        return;
      } catch (e) {
        if (e instanceof CairnError && e.status < 500) {
          const state = (e.details as { state?: string } | null)?.state;
          if (!(n > 0 && e.status === 409 && (state === "done" || state === "failed"))) {
            console.warn(`cairn worker: ${path} for step refused: ${e.message}`);
          }
          return;
        }
      }
    }
    console.error(`cairn worker: gave up reporting a result; the attempt is retried when its lease lapses`);
  }
}

const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

/** Talks to `cairn serve`: start runs, wait for them, cancel them, list and answer approvals. */
export class Client {
  private readonly http: Http;

  constructor(url: string, token?: string) {
    this.http = new Http(url, token);
  }

  /** Starts a run of a registered workflow (by name) or of a definition; returns its id. */
  async start(workflow: string | object, inputs: Record<string, unknown> = {}): Promise<string> {
    return (await this.http.request("POST", "/v1/runs", { workflow, inputs })).id;
  }

  async run(runId: string): Promise<any> {
    return this.http.request("GET", `/v1/runs/${encodeURIComponent(runId)}`);
  }

  /** Waits until the run completes, fails or is cancelled. */
  async wait(runId: string, timeoutMs = 60_000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const run = await this.run(runId);
      if (TERMINAL.has(run.status)) return run;
      if (Date.now() > deadline) throw new Error(`run ${runId} is still ${run.status} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async cancel(runId: string, reason?: string): Promise<void> {
    await this.http.request("POST", `/v1/runs/${encodeURIComponent(runId)}/cancel`, reason ? { reason } : {});
  }

  async approvals(): Promise<any[]> {
    return (await this.http.request("GET", "/v1/approvals")).approvals;
  }

  async approve(runId: string, step: string, comment?: string): Promise<any> {
    return this.decide(runId, step, { decision: "approve", comment });
  }

  async reject(runId: string, step: string, comment?: string): Promise<any> {
    return this.decide(runId, step, { decision: "reject", comment });
  }

  private async decide(runId: string, step: string, body: Record<string, unknown>): Promise<any> {
    const path = `/v1/runs/${encodeURIComponent(runId)}/approvals/${encodeURIComponent(step)}`;
    return this.http.request("POST", path, JSON.parse(JSON.stringify(body)));
  }
}
