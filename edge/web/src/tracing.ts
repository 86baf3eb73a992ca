// W3C Trace Context for the calls of one chat turn: the trace of a turn starts here, in the browser.
// Each call carries a `traceparent` naming the turn's trace and a parent id of its own, with the sampled
// flag; the edge (Envoy's OpenTelemetry tracer) continues that trace through every service. No tracing
// SDK: this page records no span itself, it only names the trace.

/** One chat turn's trace: the `Chat` call and the conversation list refreshed after it. */
export class TurnTrace {
  readonly traceId = randomHex(16);

  /** Headers for one call of the turn: a `traceparent` with a new parent id. */
  headers(): Record<string, string> {
    return { traceparent: `00-${this.traceId}-${randomHex(8)}-01` };
  }
}

/** `bytes` random bytes as lowercase hex, never all zeros (an invalid id in W3C Trace Context). */
function randomHex(bytes: number): string {
  const values = crypto.getRandomValues(new Uint8Array(bytes));
  values[0] ||= 1;
  return Array.from(values, (value) => value.toString(16).padStart(2, "0")).join("");
}
