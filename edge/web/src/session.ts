// The signed-in session: kept in localStorage (so a reload or a second tab stays signed in) and refreshed
// silently before the access token expires. One refresh at a time (single flight): every caller waiting
// for a fresh token shares it, because a refresh token is spent by its first use.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Session } from "../../../gen/ts/athena/auth/v1/auth_pb";
import { Code, ConnectError } from "@connectrpc/connect";
import { isUnreachable, SignedOutError } from "./errors";

const STORAGE_KEY = "athena.session";
/** Refresh this long before expiry, or when a quarter of the lifetime remains if that is sooner. */
const REFRESH_LEAD_MS = 60_000;
/** A failed refresh (network) is tried again after this long, while the token is still valid. */
const RETRY_MS = 5_000;

export interface StoredSession {
  readonly accessToken: string;
  /** Epoch milliseconds. */
  readonly expiresAt: number;
  /** Epoch milliseconds when the token was received: with `expiresAt`, its lifetime. */
  readonly issuedAt: number;
  readonly refreshToken: string;
  readonly userId: string;
  readonly email: string;
  readonly displayName: string;
}

export type RefreshFn = (refreshToken: string) => Promise<Session>;

export class SessionStore {
  private current: StoredSession | null;
  private inFlight: Promise<StoredSession> | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private refresher: RefreshFn | null = null;

  /** Called once when the session ends without the person asking (refresh refused, account deleted). */
  onSignedOut: (notice: string) => void = () => {};

  constructor(private readonly storage: Storage) {
    this.current = read(storage);
    // Another tab refreshed or signed out: adopt its session rather than spending our old refresh token.
    window.addEventListener("storage", (event) => {
      if (event.key !== STORAGE_KEY && event.key !== null) {
        return;
      }
      const signedIn = this.current !== null;
      this.current = read(storage);
      if (signedIn && this.current === null) {
        clearTimeout(this.timer);
        this.onSignedOut("You signed out in another tab.");
      } else {
        this.schedule();
      }
    });
  }

  /** Wires the RefreshSession call (the auth client needs no session, so it is built separately). */
  start(refresher: RefreshFn): void {
    this.refresher = refresher;
    this.schedule();
  }

  get session(): StoredSession | null {
    return this.current;
  }

  save(session: Session): StoredSession {
    const now = Date.now();
    const stored: StoredSession = {
      accessToken: session.accessToken,
      expiresAt: now + lifetimeMs(session, now),
      issuedAt: now,
      refreshToken: session.refreshToken,
      userId: session.user?.id ?? "",
      email: session.user?.email ?? "",
      displayName: session.user?.displayName || session.user?.email || "",
    };
    this.current = stored;
    this.storage.setItem(STORAGE_KEY, JSON.stringify(stored));
    this.schedule();
    return stored;
  }

  clear(): void {
    this.current = null;
    this.storage.removeItem(STORAGE_KEY);
    clearTimeout(this.timer);
  }

  /** Ends the session and tells the app (which shows sign-in with `notice`). */
  end(notice: string): void {
    if (this.current !== null) {
      this.clear();
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

  /** Exchanges the refresh token for a new session; concurrent callers share one call. */
  refresh(): Promise<StoredSession> {
    this.inFlight ??= this.doRefresh().finally(() => {
      this.inFlight = null;
    });
    return this.inFlight;
  }

  private async doRefresh(): Promise<StoredSession> {
    const session = this.current;
    if (session === null || this.refresher === null) {
      throw new SignedOutError();
    }
    // Another tab may have refreshed already: its session is in storage and ours is spent.
    const shared = read(this.storage);
    if (shared !== null && shared.refreshToken !== session.refreshToken && shared.expiresAt > Date.now()) {
      this.current = shared;
      this.schedule();
      return shared;
    }
    try {
      return this.save(await this.refresher(session.refreshToken));
    } catch (error) {
      if (sessionRefused(error)) {
        this.end("You were signed out");
        throw new SignedOutError();
      }
      throw error;
    }
  }

  private schedule(): void {
    clearTimeout(this.timer);
    const session = this.current;
    if (session === null || this.refresher === null) {
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

/** Whether RefreshSession refused the refresh token itself (the session is over), rather than failing
 * for a reason that may pass (network, overload, a server bug). */
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

function refreshAt(session: StoredSession): number {
  const lifetime = Math.max(0, session.expiresAt - session.issuedAt);
  return session.expiresAt - Math.min(REFRESH_LEAD_MS, lifetime / 4);
}

function read(storage: Storage): StoredSession | null {
  try {
    const value: unknown = JSON.parse(storage.getItem(STORAGE_KEY) ?? "null");
    if (isStoredSession(value)) {
      return value;
    }
  } catch {
    // A corrupt entry is a signed-out browser.
  }
  return null;
}

function isStoredSession(value: unknown): value is StoredSession {
  if (typeof value !== "object" || value === null) {
    return false;
  }
  const v = value as Record<string, unknown>;
  return (
    typeof v.accessToken === "string" &&
    typeof v.refreshToken === "string" &&
    typeof v.expiresAt === "number" &&
    typeof v.issuedAt === "number"
  );
}
