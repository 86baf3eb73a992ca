// The clients of the public services, over gRPC-web through the edge (same origin as the page).
// Calls to every service but AuthService carry `authorization: Bearer <access token>`; a call refused
// with UNAUTHENTICATED before any answer is retried once after a silent refresh.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AccountService } from "../../../gen/ts/athena/account/v1/account_pb";
import { AuthService } from "../../../gen/ts/athena/auth/v1/auth_pb";
import { ChatService } from "../../../gen/ts/athena/chat/v1/chat_pb";
import { ConnectionsService } from "../../../gen/ts/athena/connections/v1/connections_pb";
import { NotificationsService } from "../../../gen/ts/athena/notifications/v1/notifications_pb";
import { UploadsService } from "../../../gen/ts/athena/uploads/v1/uploads_pb";
import { SignedOutError } from "./errors";
import type { SessionStore } from "./session";

export interface Api {
  readonly auth: Client<typeof AuthService>;
  readonly chat: Client<typeof ChatService>;
  readonly account: Client<typeof AccountService>;
  readonly connections: Client<typeof ConnectionsService>;
  readonly uploads: Client<typeof UploadsService>;
  readonly notifications: Client<typeof NotificationsService>;
}

export function createApi(baseUrl: string, sessions: SessionStore): Api {
  const open = createGrpcWebTransport({ baseUrl });
  const authed = createGrpcWebTransport({ baseUrl, interceptors: [bearer(sessions)] });
  return {
    auth: createClient(AuthService, open),
    chat: createClient(ChatService, authed),
    account: createClient(AccountService, authed),
    connections: createClient(ConnectionsService, authed),
    uploads: createClient(UploadsService, authed),
    notifications: createClient(NotificationsService, authed),
  };
}

function bearer(sessions: SessionStore): Interceptor {
  return (next) => async (request) => {
    // A server-streaming request carries a one-shot iterable of its one message: keep the message so
    // the call can be sent again.
    let replay: () => typeof request = () => request;
    if (request.stream) {
      const first = await request.message[Symbol.asyncIterator]().next();
      if (first.done === true) {
        throw new ConnectError("missing request message", Code.Internal);
      }
      replay = () => ({ ...request, message: once(first.value) });
    }
    const attempt = (token: string) => {
      const call = replay();
      call.header.set("authorization", `Bearer ${token}`);
      return next(call);
    };
    const token = await sessions.accessToken();
    try {
      return await attempt(token);
    } catch (error) {
      if (!(error instanceof ConnectError) || error.code !== Code.Unauthenticated) {
        throw error;
      }
    }
    try {
      return await attempt(await sessions.recover(token));
    } catch (error) {
      if (error instanceof ConnectError && error.code === Code.Unauthenticated) {
        sessions.end("You were signed out");
        throw new SignedOutError();
      }
      throw error;
    }
  };
}

async function* once<T>(value: T): AsyncGenerator<T> {
  yield value;
}
