// Sign-in: a button per identity provider (OIDC authorization code; the provider sends the browser back to
// this page with `state` and `code`), and, in dev deployments, sign-in with just an email address.
import { Code, ConnectError } from "@connectrpc/connect";
import type { Provider, Session } from "../../../gen/ts/athena/auth/v1/auth_pb";
import type { Api } from "./api";
import { byId, el, show } from "./dom";
import { describeError } from "./errors";

const DEV_PROVIDER = "dev";

/** Where providers send the browser back after sign-in: this app's root (not `/connections`, where they
 * send it back after connecting an account: address.ts). The auth
 * service accepts it when its `AUTH_PUBLIC_ORIGIN` is this origin (auth/settings.py), and it must be
 * registered exactly with each provider, e.g. `http://127.0.0.1:8080/`. */
export function redirectUri(): string {
  return `${location.origin}/`;
}

export class SignInView {
  private readonly view = byId("signin-view", HTMLElement);
  private readonly notice = byId("signin-notice", HTMLParagraphElement);
  private readonly providers = byId("providers", HTMLDivElement);
  private readonly devForm = byId("dev-signin", HTMLFormElement);
  private readonly devEmail = byId("dev-email", HTMLInputElement);
  private readonly loading = byId("signin-loading", HTMLParagraphElement);

  onSignedIn: (session: Session) => void = () => {};

  constructor(private readonly api: Api) {
    this.devForm.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.devSignIn();
    });
  }

  /** Completes a provider login if the address holds the provider's answer; true when it did (signed in,
   * or showing why not), false when there was nothing to complete. */
  async completeRedirect(): Promise<boolean> {
    // Only at the redirect URI: `/connections` receives the answers of account connections.
    if (location.pathname !== new URL(redirectUri()).pathname) {
      return false;
    }
    const params = new URLSearchParams(location.search);
    const state = params.get("state");
    const code = params.get("code");
    const failure = params.get("error");
    if (!state && !failure) {
      return false;
    }
    history.replaceState(null, "", location.pathname + location.hash);
    if (failure || !code || !state) {
      const cancelled = failure === "access_denied";
      await this.show(cancelled ? "Sign-in was cancelled." : "Sign-in did not complete. Please try again.");
      return true;
    }
    try {
      const response = await this.api.auth.completeLogin({ state, code, refreshTokenInCookie: true });
      if (response.session) {
        this.onSignedIn(response.session);
        return true;
      }
      await this.show("Sign-in did not complete. Please try again.");
    } catch (error) {
      // A refused state or code (expired, used twice, forged) just means: start again.
      const refused =
        error instanceof ConnectError && error.code !== Code.Unavailable && error.code !== Code.Unknown;
      await this.show(refused ? "Sign-in did not complete. Please try again." : describeError(error));
    }
    return true;
  }

  async show(notice = ""): Promise<void> {
    show(this.view, true);
    this.notice.textContent = notice;
    show(this.notice, notice !== "");
    show(this.loading, true);
    this.loading.textContent = "Loading…";
    try {
      const response = await this.api.auth.listProviders({});
      const external = response.providers.filter((provider) => provider.id !== DEV_PROVIDER);
      this.providers.replaceChildren(
        ...external.map((provider) => {
          const button = el(
            "button",
            { type: "button", class: `provider provider-${provider.id}`, "data-provider": provider.id },
            `Continue with ${provider.displayName}`,
          );
          button.addEventListener("click", () => void this.beginLogin(provider, button));
          return button;
        }),
      );
      show(this.devForm, response.providers.some((provider) => provider.id === DEV_PROVIDER));
      show(this.loading, false);
    } catch (error) {
      this.loading.textContent = describeError(error);
    }
  }

  hide(): void {
    show(this.view, false);
  }

  private async beginLogin(provider: Provider, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    try {
      const response = await this.api.auth.beginLogin({ provider: provider.id, redirectUri: redirectUri() });
      location.assign(response.authorizationUrl);
    } catch (error) {
      button.disabled = false;
      this.notice.textContent = providerUnreachable(error)
        ? `${provider.displayName} can't be reached right now — try again later`
        : describeError(error);
      show(this.notice, true);
    }
  }

  private async devSignIn(): Promise<void> {
    const email = this.devEmail.value.trim();
    if (!email) {
      return;
    }
    const button = this.devForm.querySelector<HTMLButtonElement>("button[type=submit]");
    if (button) {
      button.disabled = true;
    }
    try {
      const response = await this.api.auth.devLogin({ email, refreshTokenInCookie: true });
      if (response.session) {
        this.devEmail.value = "";
        this.onSignedIn(response.session);
      }
    } catch (error) {
      this.notice.textContent = describeError(error);
      show(this.notice, true);
    } finally {
      if (button) {
        button.disabled = false;
      }
    }
  }
}

/** UNAVAILABLE said by the auth service itself rather than by Envoy ("no healthy upstream", "upstream
 * connect error …"): auth is up, the identity provider is not. */
function providerUnreachable(error: unknown): boolean {
  return (
    error instanceof ConnectError &&
    error.code === Code.Unavailable &&
    error.rawMessage !== "" &&
    !/upstream/i.test(error.rawMessage)
  );
}
