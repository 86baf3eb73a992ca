// Importing an Apple Health export, in the Connections panel. gRPC-web has no client streaming, so the
// file goes in chunks (UploadsService, uploads.proto): its SHA-256 first (read a slice at a time, see
// sha256.ts: a 1 GB export is never held whole), then CreateUpload, then AppendChunk in order, each chunk
// with its own SHA-256. A chunk that fails is sent again after a pause, from where GetUpload says the
// upload stands; once every byte is in, GetUpload is asked every second how the import goes.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { UploadKind, UploadState, type Upload } from "../../../gen/ts/athena/uploads/v1/uploads_pb";
import type { Api } from "./api";
import { byId, el, show } from "./dom";
import { describeError, isUnreachable, SignedOutError } from "./errors";
import { fileSha256, sha256Hex } from "./sha256";

/** Tries of one chunk (the first included) before the import gives up. */
const MAX_TRIES = 5;
/** Pause before the second try; doubled for each further one, up to `MAX_BACKOFF_MS`. */
const FIRST_BACKOFF_MS = 1_000;
const MAX_BACKOFF_MS = 8_000;
/** How often an import under way is asked how it goes. */
const POLL_MS = 1_000;
/** Chunk size when the service names none (AppendChunkRequest.data allows 1 byte to 2 MiB). */
const FALLBACK_CHUNK_BYTES = 1024 * 1024;

/** Failures worth another try: the call may not have arrived (network, edge, a restarting service), or
 * the upload stands elsewhere than the chunk assumed (FAILED_PRECONDITION: ask where, send from there). */
const RETRIED = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.ResourceExhausted,
  Code.Aborted,
  Code.Internal,
  Code.FailedPrecondition,
]);

const count = new Intl.NumberFormat();
const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const percent = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 0 });

/** A file that can no longer be read (changed or removed since it was chosen). */
class UnreadableFile extends Error {}

export class UploadsView {
  private readonly form = byId("upload-form", HTMLFormElement);
  private readonly input = byId("upload-file", HTMLInputElement);
  private readonly button = byId("start-upload", HTMLButtonElement);
  private readonly progress = byId("upload-progress", HTMLProgressElement);
  private readonly status = byId("upload-status", HTMLParagraphElement);
  private readonly list = byId("upload-list", HTMLUListElement);
  private readonly empty = byId("no-uploads", HTMLParagraphElement);
  /** Bumped to abandon the import under way (sign-out): its loops stop at their next step. */
  private run = 0;

  constructor(private readonly api: Api) {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const file = this.input.files?.[0];
      if (file) {
        void this.importFile(file);
      }
    });
  }

  async refresh(): Promise<void> {
    try {
      const response = await this.api.uploads.listUploads({});
      this.render(response.uploads);
    } catch (error) {
      if (!(error instanceof SignedOutError)) {
        this.list.replaceChildren();
        show(this.empty, false);
        this.say(this.status.textContent || describeError(error));
      }
    }
  }

  reset(): void {
    this.run += 1;
    this.form.reset();
    this.setBusy(false);
    show(this.progress, false);
    this.say("");
    this.list.replaceChildren();
  }

  private async importFile(file: File): Promise<void> {
    const run = ++this.run;
    const current = () => run === this.run;
    this.setBusy(true);
    try {
      this.showProgress(0, "Checking the file…");
      const sha256 = await readable(() =>
        fileSha256(file, (hashed) => {
          if (current()) {
            const share = hashed / file.size;
            this.showProgress(share, `Checking the file… ${percent.format(share)}`);
          }
        }),
      );
      if (!current()) {
        return;
      }
      const created = await this.api.uploads.createUpload({
        kind: UploadKind.APPLE_HEALTH_EXPORT,
        fileName: file.name,
        sizeBytes: BigInt(file.size),
        sha256,
      });
      let upload = created.upload;
      if (!upload) {
        throw new Error("CreateUpload answered no upload");
      }
      upload = await this.send(file, upload, created.maxChunkBytes || FALLBACK_CHUNK_BYTES, current);
      if (current()) {
        await this.follow(upload, current);
      }
    } catch (error) {
      if (current() && !(error instanceof SignedOutError)) {
        show(this.progress, false);
        this.say(
          error instanceof UnreadableFile
            ? "The file can no longer be read. Choose it again."
            : `The import did not finish: ${describeError(error)}`,
        );
      }
    } finally {
      if (current()) {
        this.setBusy(false);
        await this.refresh();
      }
    }
  }

  /** Appends the file's bytes from where `upload` stands; answers the upload once every byte is in. */
  private async send(
    file: File,
    upload: Upload,
    chunkBytes: number,
    current: () => boolean,
  ): Promise<Upload> {
    let tries = 0;
    while (current() && upload.state === UploadState.RECEIVING && upload.receivedBytes < upload.sizeBytes) {
      const offset = Number(upload.receivedBytes);
      this.showProgress(offset / file.size, `Sending… ${percent.format(offset / file.size)}`);
      try {
        const slice = file.slice(offset, offset + chunkBytes);
        const data = await readable(async () => new Uint8Array(await slice.arrayBuffer()));
        const answer = await this.api.uploads.appendChunk({
          uploadId: upload.id,
          offset: BigInt(offset),
          data,
          sha256: await sha256Hex(data),
        });
        upload = answer.upload ?? upload;
        tries = 0;
      } catch (error) {
        tries += 1;
        if (!retried(error) || tries >= MAX_TRIES) {
          throw error;
        }
        this.say(`Sending… the connection failed; trying again (${tries} of ${MAX_TRIES - 1}).`);
        await pause(Math.min(FIRST_BACKOFF_MS * 2 ** (tries - 1), MAX_BACKOFF_MS));
        upload = await this.standing(upload, current);
      }
    }
    return upload;
  }

  /** Where `upload` stands now, for sending on from there; `upload` itself when that cannot be asked
   * (the next chunk's try finds out again). */
  private async standing(upload: Upload, current: () => boolean): Promise<Upload> {
    if (!current()) {
      return upload;
    }
    try {
      return (await this.api.uploads.getUpload({ uploadId: upload.id })).upload ?? upload;
    } catch (error) {
      if (!retried(error)) {
        throw error;
      }
      return upload;
    }
  }

  /** Shows the import's progress every second until it is IMPORTED or FAILED. */
  private async follow(upload: Upload, current: () => boolean): Promise<void> {
    let failures = 0;
    while (current()) {
      switch (upload.state) {
        case UploadState.IMPORTED:
          show(this.progress, false);
          this.say(`Imported ${upload.fileName}: ${imported(upload)}.`);
          return;
        case UploadState.FAILED:
          show(this.progress, false);
          this.say(upload.statusMessage || `${upload.fileName} could not be imported.`);
          return;
        default: {
          const records =
            upload.recordsImported > 0n ? ` · ${count.format(upload.recordsImported)} records` : "";
          this.showProgress(upload.progress, `Importing… ${percent.format(upload.progress)}${records}`);
        }
      }
      await pause(POLL_MS);
      if (!current()) {
        return;
      }
      try {
        upload = (await this.api.uploads.getUpload({ uploadId: upload.id })).upload ?? upload;
        failures = 0;
      } catch (error) {
        failures += 1;
        if (!retried(error) || failures >= MAX_TRIES) {
          throw error;
        }
      }
    }
  }

  private render(uploads: readonly Upload[]): void {
    this.list.replaceChildren(
      ...uploads.map((upload) =>
        el(
          "li",
          { class: "upload", "data-state": UploadState[upload.state].toLowerCase() },
          el("span", { class: "upload-name" }, upload.fileName),
          el("span", { class: "upload-state" }, uploadSummary(upload)),
          upload.createdAt
            ? el("span", { class: "meta" }, when.format(timestampDate(upload.createdAt)))
            : null,
        ),
      ),
    );
    show(this.empty, uploads.length === 0);
  }

  private showProgress(share: number, message: string): void {
    show(this.progress, true);
    this.progress.value = Math.max(0, Math.min(1, share));
    this.say(message);
  }

  private setBusy(busy: boolean): void {
    this.button.disabled = busy;
    this.input.disabled = busy;
    this.form.setAttribute("aria-busy", String(busy));
  }

  private say(message: string): void {
    this.status.textContent = message;
  }
}

function uploadSummary(upload: Upload): string {
  switch (upload.state) {
    case UploadState.IMPORTED:
      return `Imported: ${imported(upload)}`;
    case UploadState.FAILED:
      return upload.statusMessage ? `Failed: ${upload.statusMessage}` : "Failed";
    case UploadState.IMPORTING:
      return `Importing (${percent.format(upload.progress)})`;
    case UploadState.RECEIVING:
      return `Incomplete (${percent.format(sent(upload))} sent)`;
    default:
      return "Unknown";
  }
}

/** The share of the file received, 0 to 1. */
function sent(upload: Upload): number {
  return upload.sizeBytes > 0n ? Number(upload.receivedBytes) / Number(upload.sizeBytes) : 0;
}

function imported(upload: Upload): string {
  const days = upload.daysImported === 1 ? "1 day" : `${count.format(upload.daysImported)} days`;
  return `${count.format(upload.recordsImported)} records over ${days}`;
}

function retried(error: unknown): boolean {
  if (error instanceof SignedOutError || error instanceof UnreadableFile) {
    return false;
  }
  return isUnreachable(error) || (error instanceof ConnectError && RETRIED.has(error.code));
}

/** `read`, with a failure to read the file (a DOMException: changed, moved, deleted) as `UnreadableFile`. */
async function readable<T>(read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (error) {
    throw error instanceof DOMException ? new UnreadableFile(error.message) : error;
  }
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
