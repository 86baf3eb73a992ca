// What a person reads when a call fails. Every failure is turned into a sentence here, once, from the
// gRPC status (most specific first); the views never show raw codes or stack traces.
import { Code, ConnectError } from "@connectrpc/connect";

/** The session is over (refresh failed): the app goes back to sign-in instead of showing an error. */
export class SignedOutError extends Error {
  constructor(readonly notice: string = "You were signed out") {
    super(notice);
    this.name = "SignedOutError";
  }
}

export const UNREACHABLE = "Can't reach AthenaOS — check your connection";

/** Whether the call never reached a service: the network, Envoy or every upstream is down. */
export function isUnreachable(error: unknown): boolean {
  if (!(error instanceof ConnectError)) {
    return error instanceof TypeError;
  }
  // fetch() itself failed (connection refused, offline): connect reports Unknown with the TypeError.
  return error.code === Code.Unavailable || (error.code === Code.Unknown && error.cause instanceof TypeError);
}

/** Why an answer that had begun stopped when its stream was cut (the edge or a service went away). */
export const CUT_OFF = "the connection was lost. Your message is kept — send it again for an answer.";

/** Whether a stream that had begun was cut rather than ended by a status of ours: the network or a
 * service went away (an HTTP/2 reset reaches the page as a failed read, or as Internal or Unknown). */
export function isCutOff(error: unknown): boolean {
  if (isUnreachable(error)) {
    return true;
  }
  return error instanceof ConnectError && (error.code === Code.Internal || error.code === Code.Unknown);
}

/** Seconds until a rate-limited call may succeed: the `retry-after` trailer, else a number in the text. */
export function retryAfterSeconds(error: ConnectError): number | undefined {
  const header = Number.parseFloat(error.metadata.get("retry-after") ?? "");
  if (Number.isFinite(header) && header > 0) {
    return Math.ceil(header);
  }
  const inText = /(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)/i.exec(error.rawMessage);
  return inText ? Math.ceil(Number.parseFloat(inText[1] ?? "")) : undefined;
}

export function describeError(error: unknown): string {
  if (error instanceof SignedOutError) {
    return error.notice;
  }
  if (isUnreachable(error)) {
    return UNREACHABLE;
  }
  if (!(error instanceof ConnectError)) {
    return "Something went wrong. Please try again.";
  }
  switch (error.code) {
    case Code.ResourceExhausted: {
      const seconds = retryAfterSeconds(error);
      return seconds === undefined
        ? "Slow down — try again in a few seconds"
        : `Slow down — try again in ${seconds} s`;
    }
    case Code.DeadlineExceeded:
      return "AthenaOS took too long to answer — try again";
    case Code.InvalidArgument:
    case Code.FailedPrecondition:
      return capitalise(error.rawMessage) || "That request was not valid.";
    case Code.NotFound:
      return "That no longer exists.";
    case Code.PermissionDenied:
      return "You are not allowed to do that.";
    case Code.Unauthenticated:
      return "You were signed out";
    case Code.Canceled:
      return "The request was cancelled.";
    case Code.Unimplemented:
      return "AthenaOS can't do that yet.";
    default:
      return "Something went wrong on our side. Please try again.";
  }
}

function capitalise(text: string): string {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
}
