// The erasure receipt DeleteAccount answers: what was erased, shown once the account is gone, and the
// signed receipt itself offered as a file to keep (anyone can check it against AthenaOS's public keys).
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { DeleteAccountResponse } from "../../../gen/ts/athena/account/v1/account_pb";
import { byId, el } from "./dom";

export const RECEIPT_FILE_NAME = "athena-erasure-receipt.jwt";

/** What each category of the receipt means to the person; a category not listed shows its own name. */
const CATEGORIES: Readonly<Record<string, string>> = {
  account: "Account",
  identities: "Sign-in identities",
  sessions: "Sessions",
  refresh_tokens: "Session tokens",
  data_keys: "Encryption key of your account details (destroyed)",
  memory_data_keys: "Encryption key of your conversations and memories (destroyed)",
  memory_rows: "Conversations, messages and memories (database rows)",
  memory_cache_keys: "Cached data (calendar, wearables)",
};
const ORDER = Object.keys(CATEGORIES);

export class ReceiptDialog {
  private readonly dialog = byId("receipt-dialog", HTMLDialogElement);
  private readonly summary = byId("receipt-summary", HTMLDListElement);
  private readonly time = byId("receipt-time", HTMLParagraphElement);
  private readonly download = byId("download-receipt", HTMLAnchorElement);
  private url: string | null = null;

  constructor() {
    byId("close-receipt", HTMLButtonElement).addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => this.forgetFile());
  }

  /** Shows what `deleted` says was erased, with its receipt ready to download. */
  show(deleted: DeleteAccountResponse): void {
    this.forgetFile();
    const rank = (category: string): number => {
      const index = ORDER.indexOf(category);
      return index < 0 ? ORDER.length : index;
    };
    const categories = Object.keys(deleted.erased).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    this.summary.replaceChildren(
      ...categories.flatMap((category) => [
        el("dt", {}, CATEGORIES[category] ?? category),
        el("dd", { "data-category": category }, String(deleted.erased[category])),
      ]),
    );
    this.time.textContent = deleted.erasedAt
      ? `Erased ${timestampDate(deleted.erasedAt).toLocaleString()}`
      : "";
    this.url = URL.createObjectURL(new Blob([deleted.receipt], { type: "application/jwt" }));
    this.download.href = this.url;
    this.download.download = RECEIPT_FILE_NAME;
    this.dialog.showModal();
  }

  private forgetFile(): void {
    if (this.url) {
      URL.revokeObjectURL(this.url);
      this.url = null;
    }
    this.download.removeAttribute("href");
  }
}
