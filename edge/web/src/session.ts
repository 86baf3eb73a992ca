// The signed-in session of this tab, refreshed silently before its access token expires.
//
// No script in the page can read a refresh token: the auth service keeps it in an HttpOnly cookie scoped
// to its own calls (auth.proto, `refresh_token_in_cookie`), which sign-in and every refresh replace and
// which RefreshSession and Logout present by themselves. The access token lives in this tab's memory only:
// a new tab or a reload gets its own from RefreshSession, which is also how the app learns on start
// whether the browser is signed in. All tabs share the cookie, so each refresh spends the latest refresh
// token whichever tab received it; two tabs refreshing at the same moment present the same one, a race the
// auth service forgives for a few seconds. Refreshes are single-flight within a tab.
//
// Tabs tell each other that the person signed in or out over a BroadcastChannel; its messages carry no
// token. A tab hearing of a sign-in takes the session over with a refresh of its own.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Session } from "../../../gen/ts/athena/auth/v1/auth_pb";
import { Code, ConnectError } from "@connectrpc/connect";
import { isUnreachable, SignedOutError } from "./errors";

const CHANNEL = "athena.session";
/** Set while a sign-out has not reached the auth service: page scripts cannot delete the HttpOnly cookie,
 * so until Logout has cleared it, the app must not resume the session with it. Holds no secret. */
const SIGN_OUT_PENDING_KEY = "athena.sign-out-pending";
/** Refresh this long before expiry, or when a quarter of the lifetime remains if that is sooner. */
const REFRESH_LEAD_MS = 60_000;
/** A failed refresh (network) is tried again after this long, while the token is still valid. */
const RETRY_MS = 5_000;

export interface TabSession {
  readonly accessToken: string;
  /** Epoch milliseconds. */
  readonly expiresAt: number;
  /** Epoch milliseconds when the token was received: with `expiresAt`, its lifetime. */
  readonly issuedAt: number;
  readonly userId: string;
  readonly email: string;
  readonly displayName: string;
}

/** The auth calls a session needs; the browser's cookie goes along with both. */
export interface SessionCalls {
  /** RefreshSession with the cookie: a new session, and a new cookie. */
  refresh(): Promise<Session>;
  /** Logout with the cookie: the session ends and the cookie is cleared. */
  logout(): Promise<void>;
}

/** What one tab tells the others. Never a token. */
type TabMessage =
  | { readonly kind: "signed-in"; readonly userId: string }
  | { readonly kind: "signed-out"; readonly notice: string };

export class SessionStore {
  private current: TabSession | null = null;
  private inFlight: Promise<TabSession> | null = null;
  /** Moves on at each sign-in and sign-out here, so that a refresh answered afterwards changes nothing. */
  private epoch = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private calls: SessionCalls | null = null;
  private readonly channel = new BroadcastChannel(CHANNEL);

  /** Called when the session ends without the person asking here (refresh refused, another tab signed
   * out, account deleted elsewhere); the app shows sign-in with `notice`. */
  onSignedOut: (notice: string) => void = () => {};
  /** Called when this tab is signed in by another tab's sign-in (or as another person). */
  onSignedIn: (session: TabSession) => void = () => {};

  constructor(private readonly storage: Storage) {
    this.channel.addEventListener("message", (event: MessageEvent<unknown>) => this.heard(event.data));
  }

  /** Wires the auth calls (the auth client needs no session, so it is built separately). */
  start(calls: SessionCalls): void {
    this.calls = calls;
  }

  get session(): TabSession | null {
    return this.current;
  }

  /** On start: this tab's session if the browser is signed in (the cookie is asked), else null. Throws
   * when AthenaOS cannot be reached. */
  async resume(): Promise<TabSession | null> {
    if (this.storage.getItem(SIGN_OUT_PENDING_KEY) !== null) {
      await this.finishSignOut();
      return null;
    }
    try {
      return await this.refresh();
    } catch (error) {
      if (error instanceof SignedOutError) {
        return null;
      }
      throw error;
    }
  }

  /** Keeps the session a sign-in in this tab opened, and signs the other tabs in. */
  save(session: Session): TabSession {
    this.epoch += 1;
    this.storage.removeItem(SIGN_OUT_PENDING_KEY);
    const kept = this.keep(session);
    this.post({ kind: "signed-in", userId: kept.userId });
    return kept;
  }

  /** Forgets this tab's session (nothing else). */
  clear(): void {
    this.epoch += 1;
    this.current = null;
    clearTimeout(this.timer);
  }

  /** The person signs out: every tab forgets the session, whose end Logout makes sure of (and the cookie
   * with it); the other tabs show `noticeElsewhere`. */
  async signOut(noticeElsewhere: string): Promise<void> {
    this.clear();
    this.storage.setItem(SIGN_OUT_PENDING_KEY, "true");
    this.post({ kind: "signed-out", notice: noticeElsewhere });
    await this.finishSignOut();
  }

  /** Ends the session here and tells the app (which shows sign-in with `notice`). */
  end(notice: string): void {
    const signedIn = this.current !== null;
    this.clear();
    if (signedIn) {
      this.onSignedOut(notice);
    }
  }

  /** A usable access token: refreshed first if it expires soon (timers sleep in background tabs). */
  async accessToken(): Promise<string> {
    const session = this.current;
    if (session === null) {
      throw new SignedOutError();
    }
    if (Date.now() >= refreshAt(session)) {
      return (await this.refresh()).accessToken;
    }
    return session.accessToken;
  }

  /** Refreshes after the server refused `rejectedToken`, unless another refresh already replaced it. */
  async recover(rejectedToken: string): Promise<string> {
    const session = this.current;
    if (session !== null && session.accessToken !== rejectedToken) {
      return session.accessToken;
    }
    return (await this.refresh()).accessToken;
  }

  /** Exchanges the cookie's refresh token for a new session; concurrent callers share one call. */
  refresh(): Promise<TabSession> {
    this.inFlight ??= this.doRefresh().finally(() => {
      this.inFlight = null;
    });
    return this.inFlight;
  }

  private async doRefresh(): Promise<TabSession> {
    if (this.calls === null) {
      throw new SignedOutError();
    }
    const epoch = this.epoch;
    let answer: Session;
    try {
      answer = await this.calls.refresh();
    } catch (error) {
      if (epoch === this.epoch && sessionRefused(error)) {
        this.end("You were signed out");
        throw new SignedOutError();
      }
      throw error;
    }
    if (epoch !== this.epoch) {
      // Signed in or out here while the answer was on its way: that decision stands.
      if (this.current === null) {
        throw new SignedOutError();
      }
      return this.current;
    }
    const before = this.current;
    const fresh = this.keep(answer);
    if (before !== null && before.userId !== fresh.userId) {
      this.onSignedIn(fresh); // another tab signed in as someone else: the cookie is theirs now
    }
    return fresh;
  }

  private heard(data: unknown): void {
    if (!isTabMessage(data)) {
      return;
    }
    if (data.kind === "signed-out") {
      this.end(data.notice);
      return;
    }
    // Whoever started a refresh already under way handles its answer, which is the new session.
    if (this.current?.userId === data.userId || this.inFlight !== null) {
      return;
    }
    const signedOut = this.current === null;
    this.refresh().then(
      (session) => {
        if (signedOut) {
          this.onSignedIn(session);
        }
      },
      () => undefined, // refused or unreachable: this tab stays as it is
    );
  }

  private async finishSignOut(): Promise<void> {
    try {
      await this.calls?.logout();
      this.storage.removeItem(SIGN_OUT_PENDING_KEY);
    } catch {
      // Unreachable: the flag stays, and the next start of the app tries again before anything else.
    }
  }

  private keep(session: Session): TabSession {
    const now = Date.now();
    const kept: TabSession = {
      accessToken: session.accessToken,
      expiresAt: now + lifetimeMs(session, now),
      issuedAt: now,
      userId: session.user?.id ?? "",
      email: session.user?.email ?? "",
      displayName: session.user?.displayName || session.user?.email || "",
    };
    this.current = kept;
    this.schedule();
    return kept;
  }

  private post(message: TabMessage): void {
    this.channel.postMessage(message);
  }

  private schedule(): void {
    clearTimeout(this.timer);
    const session = this.current;
    if (session === null || this.calls === null) {
      return;
    }
    const delay = Math.max(0, refreshAt(session) - Date.now());
    this.timer = setTimeout(() => {
      this.refresh().catch((error: unknown) => {
        // Signed out: already handled. Unreachable: try again while the token is still good.
        if (!(error instanceof SignedOutError) && this.current !== null) {
          clearTimeout(this.timer);
          this.timer = setTimeout(() => this.schedule(), RETRY_MS);
        }
      });
    }, delay);
  }
}

/** The access token's lifetime, from its own `iat` and `exp` claims (immune to a skewed local clock), else
 * from the session's expiry time. */
function lifetimeMs(session: Session, now: number): number {
  try {
    const payload = session.accessToken.split(".")[1] ?? "";
    const claims: unknown = JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/")));
    if (typeof claims === "object" && claims !== null) {
      const { iat, exp } = claims as { iat?: unknown; exp?: unknown };
      if (typeof iat === "number" && typeof exp === "number" && exp > iat) {
        return (exp - iat) * 1000;
      }
    }
  } catch {
    // Not a JWT we can read: fall back to the expiry the session states.
  }
  const expiresAt = session.accessTokenExpiresAt ? timestampMs(session.accessTokenExpiresAt) : now;
  return Math.max(0, expiresAt - now);
}

/** Whether RefreshSession refused the refresh token itself (the session is over, or there is none),
 * rather than failing for a reason that may pass (network, overload, a server bug). */
function sessionRefused(error: unknown): boolean {
  if (!(error instanceof ConnectError) || isUnreachable(error)) {
    return false;
  }
  const refusals = [
    Code.Unauthenticated,
    Code.InvalidArgument,
    Code.NotFound,
    Code.PermissionDenied,
    Code.FailedPrecondition,
  ];
  return refusals.includes(error.code);
}

function refreshAt(session: TabSession): number {
  const lifetime = Math.max(0, session.expiresAt - session.issuedAt);
  return session.expiresAt - Math.min(REFRESH_LEAD_MS, lifetime / 4);
}

function isTabMessage(value: unknown): value is TabMessage {
  if (typeof value !== "object" || value === null) {
    return false;
  }
  const v = value as Record<string, unknown>;
  return (
    (v.kind === "signed-in" && typeof v.userId === "string") ||
    (v.kind === "signed-out" && typeof v.notice === "string")
  );
}
