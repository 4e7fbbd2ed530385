#!/usr/bin/env python3
"""Write the bundled sample corpus: 18 months of organisational memory at "Larkspur Pay".

    python examples/make_sample_corpus.py [OUT_DIR]      # default: fastctx/sample_corpus

Larkspur Pay is a fictional mid-size payments company (card processing, payouts and a merchant
dashboard for small businesses). The corpus is in the orgmem-v1 interchange format (meta.json,
events.jsonl, vectors.npy, queries.jsonl, query_vectors.npy) with `text` on every event, plus a
README.md for humans. There is deliberately no truth.jsonl; the README lists the planted stories.

What is in it:

* hand-written causal chains (4-8 events each, months apart, across >= 3 sources); only some
  consecutive steps carry an explicit link, the others connect through rare entities
  (`fn:`, `ticket:`, `config:`, `pr:`, tail `customer:`) and wording;
* decision keys (`decision:<name>`) with 2-3 versions, most later versions `supersedes` the
  earlier one, some only implicitly (same decision entity, later time);
* look-alikes: the older v1 of the same systems, near-miss threads on similar topics with their
  own rare entities, discussions that mention a decision without being one;
* templated background: standups, Slack threads with `reply` links, bug -> patch -> review ->
  release flows, CRM notes, releases, incidents, security reviews.

Everything is deterministic (seeded `random.Random`, string seeds, no dict/set iteration order
that depends on the process), and vectors come from the built-in `HashingEncoder(dim=256)`, so
re-running the script reproduces the shipped files byte for byte.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastctx.encoder import HashingEncoder, spec_of  # noqa: E402

SEED = 20240601
DIM = 256
NAME = "larkspur-pay-sample"
DEFAULT_OUT = ROOT / "fastctx" / "sample_corpus"
FILES = ("meta.json", "events.jsonl", "vectors.npy", "queries.jsonl", "query_vectors.npy", "README.md")

SOURCES = ["github", "jira", "confluence", "slack", "salesforce", "meetings", "incidents"]
KINDS = ["design_doc", "decision", "security_review", "patch", "incident", "customer_complaint",
         "discussion", "deferral", "review", "standup", "bug_report", "feature_request",
         "postmortem", "release", "meeting_notes"]

UTC = timezone.utc


def T(s: str) -> int:
    """'2024-02-06 10:15' (UTC) -> Unix seconds."""
    fmt = "%Y-%m-%d %H:%M" if " " in s else "%Y-%m-%d"
    return int(datetime.strptime(s, fmt).replace(tzinfo=UTC).timestamp())


START, END = T("2024-01-08"), T("2025-06-27")


def day(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------- the company

PEOPLE = {  # person -> team
    "maya.okafor": "payments-core", "dev.raman": "payments-core", "kwame.asante": "payments-core",
    "tomas.reyes": "payments-core", "sam.whitfield": "product",
    "jun.park": "ledger", "nadia.petrov": "ledger", "zoe.lindqvist": "data", "tariq.malik": "data",
    "felix.moreau": "vault", "grace.tan": "vault",
    "ines.duarte": "onboarding", "luis.romero": "onboarding",
    "aisha.bello": "money-movement", "omar.haddad": "risk", "yuki.sato": "risk",
    "noah.brandt": "comms-platform", "priya.nair": "platform", "ben.oyelaran": "sre",
    "emma.novak": "dashboard", "lena.fischer": "security", "rhea.kapoor": "compliance",
    "hannah.cole": "support", "ana.silva": "sales", "marco.bellini": "sales", "carl.berg": "exec",
}


def first(p: str) -> str:
    return p.split(".")[0].capitalize()


CUSTOMERS = {
    "brightcart": "BrightCart", "oakridge-dental": "Oakridge Dental", "fennel-foods": "Fennel Foods",
    "northwind-bikes": "Northwind Bikes", "tallow-candle-co": "Tallow Candle Co",
    "meridian-travel": "Meridian Travel", "quillstone-books": "Quillstone Books",
    "harbor-fitness": "Harbor Fitness", "copperleaf-cafe": "Copperleaf Cafe",
    "saltmarsh-outfitters": "Saltmarsh Outfitters", "juniper-vet": "Juniper Vet",
    "atlas-parking": "Atlas Parking", "bluefin-sushi": "Bluefin Sushi",
    "pinegrove-clinics": "Pinegrove Clinics", "summit-ski-rentals": "Summit Ski Rentals",
    "fieldhouse-pos": "Fieldhouse POS",
}
# Background CRM traffic is Zipf-ish over these (the big accounts come up most).
CRM_CUSTOMERS = ["oakridge-dental", "fennel-foods", "northwind-bikes", "tallow-candle-co",
                 "saltmarsh-outfitters", "atlas-parking", "bluefin-sushi", "quillstone-books",
                 "copperleaf-cafe", "summit-ski-rentals", "harbor-fitness", "brightcart",
                 "juniper-vet", "meridian-travel", "pinegrove-clinics"]

# service -> team, repo, ticket prefix, people, topics, bugs (title, fix), thread openers
SERVICES = {
    "payments": dict(
        team="payments-core", repo="payments", tkt="PAY",
        people=["maya.okafor", "dev.raman", "kwame.asante", "tomas.reyes"],
        topics=["3DS2 challenge flow", "Apple Pay merchant validation", "partial captures",
                "authorization expiry", "capture batching", "network tokens",
                "decline code mapping", "surcharge rules"],
        bugs=[
            ("Apple Pay payments from Safari 17.4 fail merchant validation with a 400",
             "send the initiative context field Safari now requires and pin the validation session timeout to 30s"),
            ("Authorizations older than 7 days are captured anyway and come back as expired",
             "reject captures on expired authorizations up front with a clear error that suggests re-authorizing"),
            ("Decline code 05 from Cobalt is mapped to 'insufficient funds' in the API response",
             "map Cobalt decline code 05 to do_not_honor and put the whole mapping table under test"),
            ("Partial capture of a multi-item order leaves the remainder authorized for 30 days",
             "release the uncaptured remainder as soon as a final partial capture succeeds"),
            ("3DS2 challenge iframe is cut off on small Android screens",
             "make the challenge container responsive and fall back to a redirect below 360px width"),
            ("Surcharge line missing from receipts for Colorado merchants",
             "include surcharge lines in the receipt payload for every state that allows surcharging"),
        ]),
    "ledger": dict(
        team="ledger", repo="ledger", tkt="LED",
        people=["jun.park", "nadia.petrov", "zoe.lindqvist"],
        topics=["settlement batches", "the suspense account", "double-entry invariants",
                "month-end close", "balance snapshots", "the reconciliation job", "chargeback reserves"],
        bugs=[
            ("Month-end close job times out for merchants with more than 2M entries",
             "stream entries in 50k-row pages instead of loading the whole month into memory"),
            ("Balance snapshot for 31 March is missing for 17 merchants",
             "make snapshot runs idempotent and alert when a merchant has no snapshot by 02:00 UTC"),
            ("Chargeback reserve release posts to the wrong merchant sub-account",
             "look up the reserve account by merchant id and currency instead of by list position"),
            ("Reconciliation job marks acquirer fee adjustments as unmatched",
             "match fee adjustment lines on the acquirer reference rather than on the amount"),
            ("Double-entry invariant check is skipped for manual adjustments",
             "run the debit/credit balance check on manual adjustments before commit"),
        ]),
    "card-vault": dict(
        team="vault", repo="card-vault", tkt="VLT",
        people=["felix.moreau", "grace.tan"],
        topics=["the detokenization audit log", "network token provisioning", "vault read latency",
                "token format validation", "the key ceremony runbook"],
        bugs=[
            ("Detokenization audit log drops entries under load",
             "write audit entries through the outbox table instead of a fire-and-forget queue"),
            ("Network token provisioning fails for Discover cards",
             "send the Discover-specific token requestor id and retry provisioning once"),
            ("Vault read p99 spikes to 900ms during the nightly backup",
             "take the backup from the replica and throttle snapshot I/O"),
            ("Token format check rejects valid 19-digit PANs",
             "accept PAN lengths 12 to 19 in the tokenizer input validation"),
        ]),
    "onboarding": dict(
        team="onboarding", repo="onboarding", tkt="ONB",
        people=["ines.duarte", "luis.romero"],
        topics=["the beneficial owner form", "MCC classification", "the sole prop flow",
                "document upload", "the application review queue"],
        bugs=[
            ("Beneficial owner form loses entered data when the session refreshes",
             "save the draft owner list server-side every 10 seconds"),
            ("MCC suggestions show restricted categories to sole proprietors",
             "filter restricted MCCs out of the suggestions for sole proprietors"),
            ("Document upload rejects HEIC photos from iPhones",
             "convert HEIC to JPEG on upload and raise the size limit to 15 MB"),
            ("Application review queue shows applications that are already approved",
             "exclude approved and withdrawn applications from the review queue query"),
        ]),
    "payouts": dict(
        team="money-movement", repo="payouts", tkt="POUT",
        people=["aisha.bello", "kwame.asante"],
        topics=["next-day payouts", "the bank file cutoff", "payout holds", "instant payouts",
                "returned payouts"],
        bugs=[
            ("Friday next-day payouts are created after the bank cutoff",
             "create Friday payout batches at 14:00 UTC so they make the 16:00 cutoff"),
            ("Returned payouts (R01) are not re-credited to the merchant balance",
             "credit returned payouts back to the balance when the return file is processed"),
            ("Instant payout fee shown as 1% but charged as 1.5%",
             "read the instant payout fee from pricing config instead of a hard-coded constant"),
            ("Payout holds show no reason in the dashboard",
             "expose the hold reason code and a plain-language explanation in the payouts API"),
        ]),
    "fraud": dict(
        team="risk", repo="fraud", tkt="RISK",
        people=["omar.haddad", "yuki.sato"],
        topics=["chargeback ratio alerts", "device fingerprinting", "rule backtesting",
                "the manual review queue", "the BIN blocklist"],
        bugs=[
            ("BIN blocklist update job silently fails when the CSV has a header row",
             "skip header rows and fail loudly on any unparseable line"),
            ("Device fingerprint missing for payments from the iOS SDK",
             "pass the fingerprint collected by the iOS SDK through the payment intent metadata"),
            ("Chargeback ratio alert fires for merchants with fewer than 10 transactions",
             "require at least 100 transactions in the window before alerting on the ratio"),
            ("Manual review queue sorts by creation time instead of risk score",
             "sort the review queue by risk score, ties broken by age"),
        ]),
    "notifications": dict(
        team="comms-platform", repo="notifications", tkt="NOTIF",
        people=["noah.brandt", "dev.raman"],
        topics=["receipt emails", "SMS reminders", "webhook delivery retries", "email bounce handling",
                "template localisation"],
        bugs=[
            ("Receipt emails show the wrong currency symbol for CHF merchants",
             "format receipt amounts with the merchant's settlement currency locale"),
            ("Webhook deliveries stop retrying after the first 500 from the merchant endpoint",
             "retry webhook deliveries with backoff for up to 72 hours on 5xx responses"),
            ("Bounced receipt emails keep being retried for days",
             "stop retrying hard bounces and mark the address undeliverable"),
            ("Spanish SMS templates are cut off at 70 characters",
             "send long Spanish messages as concatenated UCS-2 segments"),
        ]),
    "api-gateway": dict(
        team="platform", repo="gateway", tkt="PLAT",
        people=["priya.nair", "ben.oyelaran"],
        topics=["API key rotation", "request log sampling", "the TLS 1.0 deprecation",
                "the OpenAPI spec", "gateway deploys"],
        bugs=[
            ("API keys rotated in the dashboard keep working for up to 10 minutes",
             "invalidate the gateway key cache on rotation events instead of waiting for the TTL"),
            ("OpenAPI spec still lists the deprecated /v1/charges endpoint as current",
             "mark /v1/charges deprecated in the spec and link the migration guide"),
            ("TLS 1.0 clients get a 502 instead of a clear handshake error",
             "fail the handshake properly and log the client's user agent for outreach"),
            ("Request log sampling drops every request from low-volume merchants",
             "sample per merchant with a floor of 100 requests an hour"),
        ]),
    "reporting": dict(
        team="data", repo="reporting", tkt="REP",
        people=["zoe.lindqvist", "tariq.malik"],
        topics=["the payout reconciliation CSV", "monthly statements", "the dispute report",
                "the warehouse sync", "1099-K forms"],
        bugs=[
            ("Payout reconciliation CSV has duplicate rows when a payout spans midnight",
             "group payout lines by payout id rather than by calendar day"),
            ("Monthly statement PDF lists fees twice for merchants with two locations",
             "aggregate fees per merchant account before rendering the statement"),
            ("Warehouse sync misses late-arriving disputes",
             "sync disputes by updated_at with a 48-hour lookback window"),
            ("1099-K forms use the legal name from onboarding instead of the tax name",
             "use the tax name field for 1099-K generation and backfill the 2024 forms"),
        ]),
    "merchant-dashboard": dict(
        team="dashboard", repo="dashboard", tkt="DASH",
        people=["emma.novak", "luis.romero"],
        topics=["team permissions", "dispute evidence upload", "2FA setup", "the payments page filters",
                "CSV exports"],
        bugs=[
            ("Team members with the viewer role can export full customer lists",
             "restrict customer exports to admin and finance roles"),
            ("Dispute evidence upload fails for PDFs over 5 MB",
             "raise the evidence upload limit to 20 MB and compress images in the browser"),
            ("2FA setup QR code is blank in Firefox",
             "render the QR code as SVG instead of canvas"),
            ("Date filter on the payments page ignores the merchant's timezone",
             "apply the merchant timezone to date filters and CSV exports"),
        ]),
}
SERVICE_ORDER = list(SERVICES)          # fixed order for every random choice
SERVICE_WEIGHTS = [9, 5, 3, 4, 4, 3, 3, 3, 3, 4]

# ----------------------------------------------------------------------------------- builder


class Builder:
    """Collects events under stable keys; ids are assigned after sorting by arrival time."""

    def __init__(self) -> None:
        self.ev: dict[str, dict] = {}
        self.order: list[str] = []
        self.used_rare: set[str] = set()

    def add(self, key, when, source, kind, text, entities, links=(), attach=None) -> str:
        assert key not in self.ev, key
        assert source in SOURCES and kind in KINDS, (key, source, kind)
        t = when if isinstance(when, int) else T(when)
        assert START <= t <= END, (key, day(t))
        ents = list(dict.fromkeys(entities))
        for e in ents:
            if e.split(":", 1)[0] in ("fn", "ticket", "config", "pr", "decision"):
                self.used_rare.add(e)
        for tgt, _ in links:
            assert self.ev[tgt]["time"] < t, (key, tgt)
        text = " ".join(text.split()).replace("the the ", "the ")   # templates + "the ..." topics
        self.ev[key] = dict(time=t, source=source, kind=kind, text=text,
                            entities=ents, links=list(links), attach=attach)
        self.order.append(key)
        return key

    def time(self, key: str) -> int:
        return self.ev[key]["time"]


# extra tokens beyond the text itself (the doc body, the diff, the timeline ...) by kind
ATTACH = {
    "design_doc": (380, 820), "postmortem": (420, 760), "security_review": (160, 420),
    "patch": (90, 340), "review": (30, 180), "release": (40, 160), "meeting_notes": (90, 300),
    "incident": (90, 280), "bug_report": (20, 140), "deferral": (30, 180), "decision": (120, 360),
    "customer_complaint": (10, 110), "feature_request": (10, 110), "discussion": (0, 30),
    "standup": (0, 20),
}


def tokens_of(key: str, e: dict) -> int:
    words = len(e["text"].split())
    attach = e["attach"]
    if attach is None:
        lo, hi = ATTACH[e["kind"]]
        attach = random.Random(f"{SEED}:tokens:{key}").randint(lo, hi)
    return max(50, min(1500, round(words * 1.3) + attach))


# --------------------------------------------------------------------------- planted stories

STORIES: list[dict] = []       # for the README and the report: name, title, keys, qid
DECISIONS: list[dict] = []     # entity, title, versions [(key, "explicit"|"implicit"|"first")]
LOOKALIKES: list[tuple[str, str]] = []   # (key, what it imitates)


def S(*names):
    return [f"service:{n}" for n in names]


def P(*people):
    return [f"person:{p}" for p in people]


def team(*teams):
    return [f"team:{t}" for t in teams]


def chains(b: Builder) -> None:
    # ---- A: payment-retry idempotency -> double charges ------------------------------------
    fn, tkt, cfg, pr = ("fn:retry_capture_v2", "ticket:PAY-1432",
                        "config:payments.retry.idempotency_window", "pr:payments#2217")
    b.add("A1", "2024-02-06 10:15", "confluence", "design_doc",
          "Design: retry engine v2 for card captures. When the Cobalt acquiring gateway times out, "
          "retry_capture_v2 re-submits the capture up to three times with exponential backoff instead "
          "of failing the payment back to the merchant. This should recover most of the 0.8% of captures "
          "we currently lose to transient gateway timeouts.",
          S("payments") + [fn, "component:retry-engine-v2"] + team("payments-core") + P("maya.okafor"),
          attach=640)
    b.add("A2", "2024-03-04 14:40", "jira", "security_review",
          "Security review of retry engine v2 (PAY-1432): retry_capture_v2 re-sends a capture after a "
          "gateway timeout without knowing whether the first attempt settled. If Cobalt processed the "
          "original request, the replay charges the cardholder a second time. Rated High: require an "
          "idempotency key per capture, persisted before the first send.",
          S("payments") + [tkt, fn] + team("security") + P("lena.fischer"),
          links=[("A1", "references")], attach=330)
    b.add("A3", "2024-04-10 16:00", "meetings", "deferral",
          "Q2 planning, payments: retry engine v2 ships in May as planned; PAY-1432 (idempotency keys on "
          "retried captures) is deferred to Q3. Sam: recovered captures are worth about $40k a month to "
          "merchants. Lena's objection is noted; Tomas accepts the replay risk until Cobalt confirms "
          "whether they dedupe captures on their side.",
          S("payments") + [tkt] + team("payments-core") + P("tomas.reyes", "sam.whitfield", "lena.fischer"),
          attach=180)
    b.add("A4", "2024-04-15 11:20", "slack", "discussion",
          "Lena in #payments-eng: heard back from Cobalt's TAM, they do NOT dedupe captures, a resubmitted "
          "capture is a new capture. With PAY-1432 deferred, retry_capture_v2 double-charges whenever a "
          "timed-out capture actually went through. Can we at least keep the Q3 date?",
          S("payments") + [tkt, fn] + P("lena.fischer"), attach=10)
    b.add("A5", "2024-07-23 09:50", "github", "patch",
          "PR payments#2217: add idempotency keys to retry_capture_v2. The key is stored in Redis with a "
          "TTL of payments.retry.idempotency_window, default 60s to keep memory flat; a retry with a live "
          "key returns the original result instead of capturing again. Closes PAY-1432.",
          S("payments") + [pr, fn, cfg, tkt] + P("dev.raman"),
          links=[("A2", "fixes")], attach=260)
    b.add("A6", "2024-11-29 17:05", "salesforce", "customer_complaint",
          "BrightCart escalation: 212 shoppers were charged twice for Black Friday orders between 14:00 and "
          "16:30 UTC. Their finance lead wants the refunds issued today and a written explanation; they "
          "say they are talking to other processors.",
          S("payments") + ["customer:brightcart"] + P("ana.silva"), attach=60)
    b.add("A7", "2024-11-29 18:30", "incidents", "incident",
          "INC-931 (SEV1): duplicate card captures during the Cobalt latency spike. Gateway p99 reached 95s; "
          "retry_capture_v2 retried after the 60s payments.retry.idempotency_window had expired, the key "
          "was gone, and the capture went out twice. 3,140 duplicate charges across 41 merchants, BrightCart "
          "the largest.",
          S("payments") + ["ticket:INC-931", fn, cfg, "customer:brightcart"] + team("sre") + P("ben.oyelaran"),
          links=[("A5", "references")], attach=240)
    b.add("A8", "2024-12-09 15:00", "confluence", "postmortem",
          "Postmortem INC-931: root cause is the 60s TTL on retry idempotency keys from payments#2217, on top "
          "of PAY-1432 being deferred in Q2 and then fixed only partially. Actions: raise "
          "payments.retry.idempotency_window to 24h, persist keys in Postgres instead of Redis, and require "
          "security sign-off before a High finding is deferred.",
          S("payments") + ["ticket:INC-931", tkt, pr, cfg] + team("payments-core") + P("maya.okafor"),
          links=[("A7", "follow_up")], attach=720)
    STORIES.append(dict(name="A", qid="q01", title="Payment-retry idempotency gap -> Black Friday double charges",
                        keys=["A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8"]))

    # ---- B: card-vault KEK rotation deferred -> tokenization outage ---------------------------
    fn, cfg, tkt = "fn:rotate_kek", "config:vault.kek_rotation_days", "ticket:SEC-214"
    b.add("B1", "2024-03-19 13:00", "confluence", "design_doc",
          "Card vault key hierarchy: every PAN is encrypted with a data key that is wrapped by a "
          "key-encryption key (KEK) held in the HSM. rotate_kek re-wraps all data keys under a new KEK. "
          "vault.kek_rotation_days is 365 and rotation is started by hand by the vault on-call until we "
          "automate it.",
          S("card-vault") + [fn, cfg] + team("vault") + P("felix.moreau"), attach=560)
    b.add("B2", "2024-05-14 10:30", "jira", "security_review",
          "PCI DSS pre-assessment finding SEC-214: KEK rotation is manual and missing from the runbook, and "
          "the HSM-issued KEK certificate expires on 2025-01-31 with nothing alerting on it. The assessor "
          "rates it Medium; we need automation or a documented, tested procedure before the 2025 audit.",
          S("card-vault") + [tkt, cfg] + team("compliance") + P("rhea.kapoor", "lena.fischer"),
          links=[("B1", "references")], attach=300)
    b.add("B3", "2024-06-03 15:45", "slack", "deferral",
          "#vault: we'll hold SEC-214 until the HSM vendor question is settled. No point automating "
          "rotate_kek against Vantix if we move vendors in the autumn. I've put a calendar reminder on the "
          "vault on-call alias for January.",
          S("card-vault") + [tkt, fn] + P("felix.moreau", "priya.nair"), attach=20)
    b.add("B4", "2025-01-31 03:40", "incidents", "incident",
          "INC-1012 (SEV1): tokenization failing for all new cards since 00:00 UTC. The KEK certificate on "
          "the HSM partition expired; the January reminder went to an on-call alias nobody reads any more. "
          "Card saves and card-on-file charges failed with VAULT_UNWRAP_ERROR for 3h40m until an emergency "
          "rotate_kek run.",
          S("card-vault", "payments") + ["ticket:INC-1012", fn] + team("sre") + P("ben.oyelaran", "grace.tan"),
          attach=260)
    b.add("B5", "2025-01-31 14:10", "salesforce", "customer_complaint",
          "Pinegrove Clinics: front desks at 12 clinics couldn't keep cards on file this morning and asked "
          "patients to pay by cheque. They want a credit on this month's fees and a root-cause write-up.",
          S("card-vault") + ["customer:pinegrove-clinics"] + P("marco.bellini"), attach=40)
    b.add("B6", "2025-02-07 11:00", "confluence", "postmortem",
          "Postmortem INC-1012: the certificate expiry was flagged eight months earlier in SEC-214 and "
          "deferred until the HSM migration; rotate_kek still depended on a person and a calendar reminder. "
          "Pinegrove Clinics and 30 other merchants lost card-on-file for the morning. Actions: automate "
          "rotation, alert 60, 30 and 7 days before any key certificate expires.",
          S("card-vault") + ["ticket:INC-1012", tkt, fn, "customer:pinegrove-clinics"] + team("vault")
          + P("felix.moreau"), links=[("B4", "follow_up")], attach=640)
    b.add("B7", "2025-03-04 16:20", "github", "patch",
          "PR card-vault#388: scheduled rotate_kek job with dual-control approval, runs every "
          "vault.kek_rotation_days (now 90), plus a certificate-expiry exporter wired to the vault on-call "
          "pager. Closes SEC-214.",
          S("card-vault") + ["pr:card-vault#388", fn, cfg, tkt] + P("grace.tan"),
          links=[("B2", "fixes")], attach=280)
    STORIES.append(dict(name="B", qid="q02", title="Manual KEK rotation deferred -> card tokenization outage",
                        keys=["B1", "B2", "B3", "B4", "B5", "B6", "B7"]))

    # ---- C: partner webhook signatures optional -> unsigned applications skip KYC ------------
    fn, cfg, tkt = "fn:verify_partner_sig", "config:webhooks.require_signature", "ticket:ONB-377"
    b.add("C1", "2024-04-02 15:30", "salesforce", "feature_request",
          "Fieldhouse POS wants to push pre-verified merchant applications to us by webhook instead of "
          "re-keying them in the dashboard. They refer about 150 merchants a month and say it blocks the "
          "renewal of the referral agreement.",
          S("onboarding") + ["customer:fieldhouse-pos"] + P("ana.silva"), attach=50)
    b.add("C2", "2024-04-25 10:00", "confluence", "design_doc",
          "Design: partner application webhooks. Partners POST applications to /v1/partner/applications "
          "and verify_partner_sig checks an HMAC-SHA256 signature over the body. Applications from a "
          "verified partner are marked partner_verified, skip document upload and go straight to risk "
          "scoring. Rollout is gated by webhooks.require_signature.",
          S("onboarding") + [fn, cfg, "customer:fieldhouse-pos"] + team("onboarding") + P("ines.duarte"),
          links=[("C1", "references")], attach=520)
    b.add("C3", "2024-05-20 12:15", "github", "review",
          "Review on onboarding#874: verify_partner_sig returns true when the X-Partner-Signature header is "
          "missing, so Fieldhouse's sandbox keeps working while they finish their signing code. Approving "
          "with a TODO to set webhooks.require_signature to true before GA.",
          S("onboarding") + ["pr:onboarding#874", fn, cfg] + P("maya.okafor", "ines.duarte"), attach=90)
    b.add("C4", "2024-10-08 09:30", "jira", "bug_report",
          "ONB-377: the external pentest (Northgate Security) posted an unsigned application to "
          "/v1/partner/applications and it was accepted as partner_verified, skipping KYC document checks. "
          "webhooks.require_signature is still false in production.",
          S("onboarding") + [tkt, cfg, fn] + team("security") + P("lena.fischer"), attach=120)
    b.add("C5", "2024-10-09 13:00", "incidents", "incident",
          "INC-987 (SEV2): audit of five months of partner applications after ONB-377. 14 merchant accounts "
          "were created from unsigned requests, 3 of them not from Fieldhouse; two had already processed "
          "$18k. Accounts frozen and referred to risk.",
          S("onboarding", "fraud") + ["ticket:INC-987", tkt] + P("ines.duarte", "omar.haddad"),
          links=[("C4", "references")], attach=200)
    b.add("C6", "2024-10-10 18:40", "github", "patch",
          "PR onboarding#912: verify_partner_sig rejects any request without a valid signature; the "
          "webhooks.require_signature flag is removed and signing is always enforced. Adds replay "
          "protection with a 5-minute timestamp window.",
          S("onboarding") + ["pr:onboarding#912", fn, cfg, tkt] + P("ines.duarte"),
          links=[("C4", "fixes")], attach=230)
    b.add("C7", "2024-10-24 10:00", "jira", "security_review",
          "Security sign-off for the ONB-377 remediation: onboarding#912 verified in production, unsigned "
          "and replayed requests are rejected, and partner secrets now rotate every 180 days. Closing with "
          "a note that review approvals with security TODOs need a follow-up ticket.",
          S("onboarding") + [tkt, "pr:onboarding#912"] + team("security") + P("lena.fischer"), attach=250)
    STORIES.append(dict(name="C", qid="q03", title="Optional partner-webhook signature -> unsigned merchants skip KYC",
                        keys=["C1", "C2", "C3", "C4", "C5", "C6", "C7"]))

    # ---- D: per-line FX rounding drift -> short GBP payouts ----------------------------------
    fn, cfg, tkt = "fn:fx_to_minor_units", "config:ledger.rounding_mode", "ticket:LED-902"
    b.add("D1", "2024-05-07 09:00", "confluence", "design_doc",
          "Design: multi-currency ledger. Amounts are stored as integer minor units per currency; FX "
          "conversion goes through fx_to_minor_units, which rounds half-up on every line item "
          "(ledger.rounding_mode = HALF_UP). EUR and GBP settlement first, zero-decimal currencies later.",
          S("ledger") + [fn, cfg] + team("ledger") + P("jun.park"), attach=600)
    b.add("D2", "2024-05-09 16:30", "slack", "discussion",
          "Zoe: rounding every line will drift from the acquirer settlement file, which rounds once per "
          "batch with banker's rounding. Jun: the drift is under a penny per line, we'll park it in the "
          "suspense account and reconcile monthly. Keeping ledger.rounding_mode as HALF_UP for launch.",
          S("ledger") + [cfg, fn] + P("zoe.lindqvist", "jun.park"), attach=15)
    b.add("D3", "2024-08-13 11:10", "jira", "bug_report",
          "LED-902: daily reconciliation of EUR->GBP settlements is off by 0.50 to 3.10 GBP per batch and the "
          "suspense account has collected 4,812 GBP since June. The drift grows with the number of "
          "small-ticket lines in a batch.",
          S("ledger") + [tkt, cfg] + P("zoe.lindqvist"), attach=110)
    b.add("D4", "2024-09-02 15:00", "meetings", "deferral",
          "Ledger sync: LED-902 is pushed behind the database migration work for Q4. Finance will write off "
          "the suspense balance monthly in the meantime; nobody has asked about it externally.",
          S("ledger") + [tkt] + team("ledger") + P("jun.park", "nadia.petrov"), attach=120)
    b.add("D5", "2024-11-18 10:45", "salesforce", "customer_complaint",
          "Meridian Travel: GBP payouts for EUR bookings have come up a few pence short on almost every "
          "payout since July. Over four months it adds up to about 1,900 GBP and their auditors have "
          "flagged it.",
          S("payouts", "ledger") + ["customer:meridian-travel"] + P("marco.bellini"), attach=60)
    b.add("D6", "2024-11-26 17:20", "github", "patch",
          "PR ledger#1530: fx_to_minor_units carries the unrounded remainder and rounds once per settlement "
          "batch with ledger.rounding_mode = HALF_EVEN, matching the acquirer file. Includes a backfill "
          "that recomputes June to November payouts for affected merchants. Fixes LED-902.",
          S("ledger") + ["pr:ledger#1530", fn, cfg, tkt, "customer:meridian-travel"] + P("jun.park"),
          links=[("D3", "fixes")], attach=310)
    b.add("D7", "2024-12-03 16:00", "salesforce", "meeting_notes",
          "Call with Meridian Travel: walked their finance team through the ledger#1530 fix and the backfill; "
          "a 1,912.40 GBP adjustment lands with Friday's payout. They accepted the explanation and asked for "
          "it in writing for the auditors.",
          S("ledger", "payouts") + ["customer:meridian-travel", "pr:ledger#1530"] + P("marco.bellini", "jun.park"),
          links=[("D5", "follow_up")], attach=140)
    STORIES.append(dict(name="D", qid="q04", title="Per-line FX rounding -> Meridian Travel's short GBP payouts",
                        keys=["D1", "D2", "D3", "D4", "D5", "D6", "D7"]))

    # ---- E: tighter payout velocity limit -> held payouts, review backlog (forward) ----------
    cfg, fn, tkt = "config:fraud.payout_velocity_limit", "fn:score_payout_velocity", "ticket:RISK-118"
    b.add("E1", "2025-01-14 14:00", "meetings", "decision",
          "Risk review decision: after December's mule-account ring (RISK-118) we tighten the payout velocity "
          "limit (fraud.payout_velocity_limit) from 5x to 2x a merchant's 30-day average daily volume. Payouts above "
          "the limit are held for manual review.",
          S("fraud", "payouts") + [cfg, tkt, "decision:payout-velocity-limit"] + team("risk")
          + P("omar.haddad", "yuki.sato"), attach=220)
    b.add("E2", "2025-01-21 10:30", "github", "patch",
          "PR fraud#640: score_payout_velocity compares each payout to fraud.payout_velocity_limit times the "
          "30-day average and routes anything above it to the manual review queue. Refs RISK-118.",
          S("fraud") + ["pr:fraud#640", fn, cfg, tkt] + P("yuki.sato"),
          links=[("E1", "references")], attach=240)
    b.add("E3", "2025-01-28 09:00", "github", "release",
          "fraud-engine 4.2.0 released: payout velocity holds (fraud#640) on for all merchants, BIN blocklist "
          "reload without restart, rule backtest UI.",
          S("fraud") + ["pr:fraud#640"] + P("omar.haddad"), attach=90)
    b.add("E4", "2025-02-10 13:20", "salesforce", "customer_complaint",
          "Harbor Fitness: annual membership renewals went out on 1 February and their payouts have been "
          "held for six days. They can't make payroll on Friday without them and want to know who decided "
          "their own members look like fraud.",
          S("payouts", "fraud") + ["customer:harbor-fitness"] + P("ana.silva"), attach=50)
    b.add("E5", "2025-02-12 08:15", "incidents", "incident",
          "INC-1044 (SEV2): payout manual review queue at 1,400 items and growing; risk ops clears about 200 a "
          "day. Nearly all holds come from score_payout_velocity on seasonal merchants (gyms, ski rentals, "
          "tax preparers) whose February volume is far above their 30-day average.",
          S("fraud", "payouts") + ["ticket:INC-1044", fn, "customer:harbor-fitness"] + team("risk")
          + P("yuki.sato"), attach=200)
    b.add("E6", "2025-02-13 11:00", "slack", "discussion",
          "#risk: Omar proposes loosening fraud.payout_velocity_limit to 3x and releasing holds for merchants "
          "with more than 12 months of clean history. Yuki: 2x would still have caught every mule account in "
          "RISK-118, the real problem is the 30-day baseline.",
          S("fraud") + [cfg, tkt] + P("omar.haddad", "yuki.sato"), links=[("E5", "references")], attach=20)
    b.add("E7", "2025-02-20 17:00", "github", "patch",
          "PR fraud#655: score_payout_velocity uses a seasonal baseline (same month last year when available) "
          "and skips merchants with 12+ months of clean history; fraud.payout_velocity_limit stays at 2x. "
          "Backlog from INC-1044 released after re-scoring.",
          S("fraud") + ["pr:fraud#655", fn, cfg, "ticket:INC-1044"] + P("yuki.sato"), attach=280)
    STORIES.append(dict(name="E", qid="q05", title="Tighter payout velocity limit -> seasonal merchants' payouts held",
                        keys=["E1", "E2", "E3", "E4", "E5", "E6", "E7"]))

    # ---- F: verbose provider logging -> PII in logs ------------------------------------------
    fn, cfg, pr = "fn:log_provider_payload", "config:logging.redact_fields", "pr:notifications#455"
    b.add("F1", "2024-06-11 09:40", "jira", "bug_report",
          "SUP-2291: Juniper Vet says appointment reminder texts aren't arriving. We can't tell whether "
          "Sendwave rejected them because the notification service doesn't log the provider response.",
          S("notifications") + ["ticket:SUP-2291", "customer:juniper-vet"] + team("support") + P("hannah.cole"),
          attach=60)
    b.add("F2", "2024-06-14 15:10", "github", "patch",
          "PR notifications#455: log_provider_payload logs the full request and response bodies of SMS and "
          "email provider calls at INFO, so support can see why a message wasn't delivered. Refs SUP-2291.",
          S("notifications") + [pr, fn, "ticket:SUP-2291"] + P("noah.brandt"),
          links=[("F1", "references")], attach=150)
    b.add("F3", "2024-06-20 09:00", "github", "release",
          "notifications 1.18.0 released: verbose provider logging (notifications#455), Spanish SMS "
          "templates, retry budget metrics.",
          S("notifications") + [pr] + P("noah.brandt"), attach=70)
    b.add("F4", "2024-09-17 14:00", "jira", "security_review",
          "SEC-301: the quarterly log scan found customer phone numbers, email addresses and receipt "
          "contents (cardholder name, last four digits) in notification logs since June, shipped to the log "
          "vendor. The source is log_provider_payload; logging.redact_fields doesn't cover provider payloads.",
          S("notifications") + ["ticket:SEC-301", fn, cfg] + team("security") + P("lena.fischer"), attach=280)
    b.add("F5", "2024-09-18 10:00", "incidents", "incident",
          "INC-968 (SEV2, privacy): purge of notification logs from June 14 onward at the log vendor; "
          "Compliance is assessing whether the SEC-301 exposure is notifiable. Verbose provider logging "
          "switched off by config in the meantime.",
          S("notifications") + ["ticket:INC-968", "ticket:SEC-301"] + team("compliance") + P("rhea.kapoor"),
          links=[("F4", "references")], attach=180)
    b.add("F6", "2024-09-19 16:30", "github", "patch",
          "PR notifications#470: log_provider_payload now logs only the status code and provider message id; "
          "logging.redact_fields gains phone, email, cardholder_name and body, and a test fails the build if "
          "a provider payload reaches the logger.",
          S("notifications") + ["pr:notifications#470", fn, cfg, "ticket:SEC-301"] + P("noah.brandt"),
          links=[("F4", "fixes")], attach=220)
    b.add("F7", "2024-10-02 11:00", "confluence", "postmortem",
          "Postmortem INC-968: a debugging change for SUP-2291 (notifications#455) logged whole provider "
          "payloads, and our redaction only knew about API fields. The data sat at the log vendor for three "
          "months. Outcome: not notifiable after the purge, and log retention goes to compliance for review.",
          S("notifications") + ["ticket:INC-968", "ticket:SUP-2291", pr, cfg] + team("compliance")
          + P("rhea.kapoor", "noah.brandt"), links=[("F5", "follow_up")], attach=580)
    STORIES.append(dict(name="F", qid="q06", title="Debug logging of provider payloads -> customer PII in logs",
                        keys=["F1", "F2", "F3", "F4", "F5", "F6", "F7"]))

    # ---- G: fail-closed shared rate limiter -> total API outage on Redis failover -------------
    cfg, fn, tkt = "config:ratelimit.fail_mode", "fn:acquire_token", "ticket:PLAT-640"
    b.add("G1", "2024-08-06 10:00", "confluence", "design_doc",
          "Design: shared rate limiting for the API gateway. Per-merchant limits move from in-process "
          "counters to a Redis token bucket (acquire_token) so limits hold across all 24 gateway pods. "
          "ratelimit.fail_mode = closed: if Redis is unreachable, requests get a 429 to protect "
          "downstream services.",
          S("api-gateway") + [fn, cfg, "component:ratelimit-v2"] + team("platform") + P("priya.nair"),
          attach=540)
    b.add("G2", "2024-08-20 15:30", "github", "review",
          "Review on gateway#301: failing closed means a Redis failover takes the whole public API down. "
          "Suggest failing open to a local per-pod bucket. Priya: the threat model asks for fail-closed; "
          "keeping ratelimit.fail_mode = closed for now, PLAT-640 to revisit after launch.",
          S("api-gateway") + ["pr:gateway#301", cfg, tkt] + P("ben.oyelaran", "priya.nair"), attach=110)
    b.add("G3", "2024-09-05 09:00", "github", "release",
          "gateway 5.0.0 released: Redis-backed shared rate limiting (gateway#301), per-merchant limits "
          "visible in the dashboard, request ids on every error response.",
          S("api-gateway") + ["pr:gateway#301"] + P("priya.nair"), attach=80)
    b.add("G4", "2025-03-18 20:10", "incidents", "incident",
          "INC-1071 (SEV1): every API request rejected with 429 for 11 minutes during a planned Redis cluster "
          "failover. acquire_token timed out and ratelimit.fail_mode = closed turned that into a full outage "
          "for all merchants.",
          S("api-gateway", "payments") + ["ticket:INC-1071", fn, cfg] + team("sre") + P("ben.oyelaran"),
          attach=230)
    b.add("G5", "2025-03-19 09:30", "salesforce", "customer_complaint",
          "Northwind Bikes: their online checkout was down for the first ten minutes of the spring sale "
          "launch yesterday evening. They estimate 300 lost orders and want to know why a planned "
          "maintenance took them offline.",
          S("api-gateway") + ["customer:northwind-bikes"] + P("ana.silva"), attach=40)
    b.add("G6", "2025-03-25 14:00", "confluence", "postmortem",
          "Postmortem INC-1071: fail-closed was chosen in the gateway#301 review and PLAT-640 never got "
          "revisited; nobody connected it to the Redis maintenance plan. Northwind Bikes and about 900 other "
          "merchants saw errors. Action: fail open to a local bucket at 50% of the limit.",
          S("api-gateway") + ["ticket:INC-1071", tkt, "pr:gateway#301", cfg, "customer:northwind-bikes"]
          + team("platform") + P("priya.nair"), links=[("G4", "follow_up")], attach=600)
    b.add("G7", "2025-04-01 11:15", "github", "patch",
          "PR gateway#344: acquire_token falls back to a per-pod local bucket at 50% of the merchant limit "
          "when Redis is unreachable; ratelimit.fail_mode defaults to open. Closes PLAT-640.",
          S("api-gateway") + ["pr:gateway#344", fn, cfg, tkt] + P("ben.oyelaran"), attach=230)
    STORIES.append(dict(name="G", qid="q07", title="Fail-closed shared rate limiter -> 11-minute API outage",
                        keys=["G1", "G2", "G3", "G4", "G5", "G6", "G7"]))


def decisions(b: Builder) -> None:
    # ---- HSM vendor: Vantix -> Korvel K7 appliances -> Korvel Cloud ----------------------------
    d = "decision:card-vault-hsm-vendor"
    b.add("K1a", "2024-02-20 11:00", "confluence", "decision",
          "Decision: the HSM vendor for the card vault is Vantix. Card keys live in Vantix CloudHSM (FIPS 140-2 "
          "Level 3) with partitions in us-east and eu-west; chosen over Korvel on price and because it needs "
          "no hardware in our racks.",
          S("card-vault") + [d] + team("vault") + P("felix.moreau", "carl.berg"))
    b.add("K1d1", "2024-07-18 10:20", "slack", "discussion",
          "#vault: Vantix unwrap p99 is 40ms and their 2025 price sheet is up 60%. Should we revisit the HSM "
          "vendor? Korvel quoted K7 appliances for both colo racks.",
          S("card-vault") + [d] + P("felix.moreau", "grace.tan"))
    b.add("K1b", "2024-09-24 15:00", "meetings", "decision",
          "Decision: switch the card vault's HSM vendor from Vantix to Korvel, running Korvel K7 HSM appliances "
          "in our two colo racks. Vantix latency (p99 40ms) and the 60% price increase outweigh the cost of "
          "running hardware. Migration October to December.",
          S("card-vault") + [d] + team("vault") + P("felix.moreau", "carl.berg"),
          links=[("K1a", "supersedes")])
    b.add("K1c", "2025-03-11 10:00", "confluence", "decision",
          "Decision: the card vault keys move from self-hosted Korvel K7 appliances to Korvel Cloud HSM "
          "(managed); same HSM vendor, key material carried over in a key-export ceremony. K7 is end-of-sale "
          "and the January KEK incident showed we can't staff appliance operations.",
          S("card-vault") + [d] + team("vault") + P("felix.moreau", "grace.tan"),
          links=[("K1b", "supersedes")])
    b.add("K1d2", "2025-05-06 16:40", "slack", "discussion",
          "Grace: are the old K7 appliances still doing anything? Felix: only as cold standby until the last "
          "merchants' keys are re-wrapped in Korvel Cloud next month; all live traffic is on Korvel Cloud.",
          S("card-vault") + [d] + P("grace.tan", "felix.moreau"))
    DECISIONS.append(dict(entity=d, title="Which HSM holds the card vault keys",
                          versions=[("K1a", "first"), ("K1b", "explicit"), ("K1c", "explicit")],
                          discussions=["K1d1", "K1d2"]))

    # ---- ledger database: Postgres 14 -> CockroachDB -> Postgres 16 + Citus (implicit) -------
    d = "decision:ledger-database"
    b.add("K2a", "2024-01-23 14:00", "confluence", "decision",
          "Decision: the ledger database stays on Postgres 14, a single primary with one synchronous replica. "
          "Revisit when sustained writes pass 3,000 per second or EU data residency becomes a requirement.",
          S("ledger") + [d] + team("ledger") + P("jun.park"))
    b.add("K2b", "2024-08-27 15:00", "meetings", "decision",
          "Decision: migrate the ledger database to CockroachDB for multi-region writes; EU merchants' data has "
          "to stay in the EU from 2025. Shadow writes from October, cut-over in Q1.",
          S("ledger") + [d] + team("ledger") + P("jun.park", "carl.berg"),
          links=[("K2a", "supersedes")])
    b.add("K2d1", "2024-11-05 11:00", "meetings", "meeting_notes",
          "Ledger migration check-in: CockroachDB shadow writes at 40% of traffic; p99 write latency is 3x "
          "Postgres on cross-region transactions and two invariant checks had to be rewritten.",
          S("ledger") + [d] + team("ledger") + P("jun.park", "nadia.petrov"))
    b.add("K2c", "2025-02-18 10:30", "confluence", "decision",
          "Ledger database, revised: we stop the CockroachDB migration; the ledger will run on Postgres 16 "
          "with Citus for sharding. EU residency is met with a separate EU cluster instead of multi-region "
          "writes. Shadow writes to Cockroach end this week.",
          S("ledger") + [d] + team("ledger") + P("jun.park", "carl.berg"))   # implicit: no supersedes link
    DECISIONS.append(dict(entity=d, title="What database the ledger runs on",
                          versions=[("K2a", "first"), ("K2b", "explicit"), ("K2c", "implicit")],
                          discussions=["K2d1"]))

    # ---- KYC provider: Veridoc -> IDNorth -> IDNorth + Veridoc fallback ------------------------
    d = "decision:kyc-provider"
    b.add("K3a", "2024-01-30 16:00", "confluence", "decision",
          "Decision: Veridoc runs identity and document checks for all new merchants, US and EU.",
          S("onboarding") + [d] + team("onboarding") + P("ines.duarte", "rhea.kapoor"))
    b.add("K3b", "2024-07-09 14:30", "meetings", "decision",
          "Decision: IDNorth becomes the primary KYC provider: about half the cost per check and better EU "
          "document coverage. Veridoc stays only for US sole proprietors until its contract ends in December.",
          S("onboarding") + [d] + team("onboarding", "compliance") + P("ines.duarte", "rhea.kapoor"),
          links=[("K3a", "supersedes")])
    b.add("K3d1", "2024-12-10 09:45", "slack", "discussion",
          "#onboarding: Veridoc contract ends 31 December, so US sole props switch to IDNorth on the 16th. "
          "After that every KYC check goes to IDNorth.",
          S("onboarding") + [d] + P("luis.romero"))
    b.add("K3inc", "2025-04-08 13:00", "incidents", "incident",
          "INC-1083 (SEV2): IDNorth API outage for five hours; 310 merchant applications stuck in "
          "verification and no fallback provider configured.",
          S("onboarding") + ["ticket:INC-1083"] + P("ines.duarte"))
    b.add("K3c", "2025-04-22 15:00", "confluence", "decision",
          "Decision: dual-provider KYC. IDNorth stays primary; Veridoc is re-contracted as an automatic "
          "fallback when IDNorth times out or returns confidence below 0.8.",
          S("onboarding") + [d] + team("onboarding", "compliance") + P("ines.duarte", "rhea.kapoor"),
          links=[("K3b", "supersedes")])
    DECISIONS.append(dict(entity=d, title="Which provider runs merchant KYC",
                          versions=[("K3a", "first"), ("K3b", "explicit"), ("K3c", "explicit")],
                          discussions=["K3d1"]))

    # ---- log retention: 400 days -> 30 days raw / 400 days redacted ----------------------------
    d = "decision:log-retention"
    b.add("K4a", "2024-03-26 10:00", "confluence", "decision",
          "Decision: application logs are kept for 400 days at the log vendor so that dispute and chargeback "
          "investigations can go back more than a year.",
          S("api-gateway", "notifications") + [d] + team("platform", "compliance") + P("priya.nair", "rhea.kapoor"))
    b.add("K4d1", "2024-06-10 15:20", "slack", "discussion",
          "Rhea: for the disputes team, how far back do application logs go? Ben: 400 days, per the retention "
          "decision from March.",
          S("api-gateway") + [d] + P("rhea.kapoor", "ben.oyelaran"))
    b.add("K4b", "2024-10-15 11:00", "confluence", "decision",
          "Decision: raw application logs are kept 30 days; a redacted audit stream is kept 400 days for "
          "dispute investigations. Follows the SEC-301 review of what ends up in logs.",
          S("api-gateway", "notifications") + [d] + team("platform", "compliance") + P("rhea.kapoor", "priya.nair"),
          links=[("K4a", "supersedes")])
    DECISIONS.append(dict(entity=d, title="How long application logs are kept",
                          versions=[("K4a", "first"), ("K4b", "explicit")], discussions=["K4d1"]))

    # ---- SEV paging policy: owning team only -> owning team + SRE + IC (implicit) ---------------
    d = "decision:incident-paging"
    b.add("K5a", "2024-02-27 16:00", "confluence", "decision",
          "Decision: SEV1 and SEV2 incidents page the owning team's on-call only; SRE joins when asked.",
          S("payments") + [d] + team("sre") + P("priya.nair", "ben.oyelaran"))
    b.add("K5b", "2024-12-17 14:00", "meetings", "decision",
          "Paging policy after INC-931: SEV1 now pages the owning team, the SRE primary and the incident "
          "commander rotation at once; SEV2 pages the owning team and the SRE secondary.",
          S("payments") + [d] + team("sre") + P("priya.nair", "carl.berg"))   # implicit
    DECISIONS.append(dict(entity=d, title="Who gets paged for SEV1/SEV2 incidents",
                          versions=[("K5a", "first"), ("K5b", "implicit")], discussions=[]))


def lookalikes(b: Builder) -> None:
    L = LOOKALIKES.append
    # --- for A: retry engine v1, duplicate payouts, double refunds
    b.add("LA1", "2024-01-16 11:00", "jira", "security_review",
          "Security review of retry engine v1 (PAY-1190): retry_capture_v1 never resubmits a capture, it only "
          "polls the acquirer for status after a timeout, so there is no replay risk. Low finding: the poll "
          "interval is hard-coded.",
          S("payments") + ["ticket:PAY-1190", "fn:retry_capture_v1", "component:retry-engine-v1"]
          + P("lena.fischer"))
    L(("LA1", "A: v1 retry engine security review"))
    b.add("LA2", "2024-01-24 09:30", "jira", "bug_report",
          "PAY-1204: retry_capture_v1 gives up after one status poll and marks the payment failed even when "
          "Cobalt captured it, so merchants see a decline for orders that were actually charged.",
          S("payments") + ["ticket:PAY-1204", "fn:retry_capture_v1", "component:retry-engine-v1"] + P("hannah.cole"))
    L(("LA2", "A: v1 retry engine bug"))
    b.add("LA3", "2024-02-01 14:00", "github", "patch",
          "PR payments#2051: retry_capture_v1 polls capture status three times before marking it failed. "
          "Fixes PAY-1204.",
          S("payments") + ["pr:payments#2051", "ticket:PAY-1204", "fn:retry_capture_v1"] + P("kwame.asante"),
          links=[("LA2", "fixes")])
    L(("LA3", "A: v1 retry engine patch"))
    b.add("LA4", "2024-06-04 09:00", "github", "release",
          "payments 4.0.0 released: the retry engine v1 status poller (retry_capture_v1) and the legacy "
          "capture worker are removed; component retry-engine-v1 archived.",
          S("payments") + ["fn:retry_capture_v1", "component:retry-engine-v1"] + P("maya.okafor"))
    L(("LA4", "A: v1 retry engine removal"))
    b.add("NA1", "2024-06-25 10:15", "jira", "bug_report",
          "POUT-311: Quillstone Books received the same payout twice after ops resubmitted the 24 June bank "
          "file; resend_payout doesn't check whether the bank already accepted the first file.",
          S("payouts") + ["ticket:POUT-311", "fn:resend_payout", "customer:quillstone-books"] + P("aisha.bello"))
    L(("NA1", "A: near-miss duplicate payout"))
    b.add("NA2", "2024-06-25 13:40", "slack", "discussion",
          "#money-movement: the duplicate Quillstone payout is clawed back. For POUT-311 I'd add a file-level "
          "guard, payouts.resend_guard, rather than dedupe per payout.",
          S("payouts") + ["ticket:POUT-311", "config:payouts.resend_guard"] + P("kwame.asante"))
    L(("NA2", "A: near-miss duplicate payout"))
    b.add("NA3", "2024-07-02 16:00", "github", "patch",
          "PR payouts#418: resend_payout refuses to resend a bank file the bank has acknowledged, behind "
          "payouts.resend_guard. Fixes POUT-311.",
          S("payouts") + ["pr:payouts#418", "fn:resend_payout", "config:payouts.resend_guard", "ticket:POUT-311"]
          + P("aisha.bello"), links=[("NA1", "fixes")])
    L(("NA3", "A: near-miss duplicate payout"))
    b.add("NA4", "2024-09-10 12:00", "salesforce", "customer_complaint",
          "Copperleaf Cafe: one of their customers was refunded twice for the same order and they want to "
          "know whether that can happen on larger refunds too.",
          S("payments") + ["customer:copperleaf-cafe"] + P("marco.bellini"))
    L(("NA4", "A: near-miss double refund"))
    b.add("NA5", "2024-09-11 09:20", "jira", "bug_report",
          "PAY-1501: double-clicking the refund button in the dashboard issues two refunds; issue_refund has no "
          "duplicate check. Found from the Copperleaf Cafe complaint.",
          S("payments", "merchant-dashboard") + ["ticket:PAY-1501", "fn:issue_refund", "customer:copperleaf-cafe"]
          + P("hannah.cole"))
    L(("NA5", "A: near-miss double refund"))
    b.add("NA6", "2024-09-16 15:30", "github", "patch",
          "PR dashboard#733: the refund button is disabled while a request is in flight and the dashboard "
          "sends an Idempotency-Key; issue_refund rejects duplicates. Fixes PAY-1501.",
          S("merchant-dashboard", "payments") + ["pr:dashboard#733", "fn:issue_refund", "ticket:PAY-1501"]
          + P("emma.novak"), links=[("NA5", "fixes")])
    L(("NA6", "A: near-miss double refund"))
    b.add("NA7", "2024-11-29 15:10", "slack", "discussion",
          "#sre: Black Friday traffic is 6x normal and dashboard p95 is at 4s, scaling the web pool from 12 to "
          "30 pods. Payments API itself looks fine from here.",
          S("merchant-dashboard") + team("sre") + P("ben.oyelaran"))
    L(("NA7", "A: same-day noise"))
    # --- for B: v1 tokenizer, expired TLS certificate
    b.add("LB1", "2024-01-29 10:00", "confluence", "design_doc",
          "Retiring the v1 tokenizer: cards saved before 2022 still live in the v1 tokenizer (MySQL with an "
          "application-level AES key from a config file). Plan: re-tokenize 1.2M cards into the HSM-backed "
          "card vault by June.",
          S("card-vault") + ["component:card-vault-v1", "fn:rotate_aes_key_v1"] + P("felix.moreau"))
    L(("LB1", "B: v1 tokenizer"))
    b.add("LB2", "2024-04-16 14:00", "jira", "security_review",
          "SEC-188: the v1 tokenizer's AES key hasn't been rotated since 2021; rotate_aes_key_v1 was never "
          "scheduled. Accepted as a risk because v1 is retired in June.",
          S("card-vault") + ["ticket:SEC-188", "fn:rotate_aes_key_v1", "component:card-vault-v1"] + P("lena.fischer"))
    L(("LB2", "B: v1 key rotation risk accepted"))
    b.add("LB3", "2024-06-27 09:00", "github", "release",
          "card-vault 3.0.0 released: the v1 tokenizer read path is removed after re-tokenizing 1.19M cards; "
          "4,212 expired cards were dropped.",
          S("card-vault") + ["component:card-vault-v1"] + P("grace.tan"))
    L(("LB3", "B: v1 tokenizer removal"))
    b.add("NB1", "2024-11-05 07:30", "incidents", "incident",
          "INC-1001 (SEV3): the merchant dashboard served an expired TLS certificate for 47 minutes. "
          "Auto-renewal failed because the DNS challenge record was deleted in the DNS provider migration.",
          S("merchant-dashboard") + ["ticket:INC-1001", "config:dashboard.tls_autorenew"] + P("ben.oyelaran"))
    L(("NB1", "B: near-miss expired certificate"))
    b.add("NB2", "2024-11-12 11:00", "confluence", "postmortem",
          "Postmortem INC-1001: expired certificate on the dashboard domain. dashboard.tls_autorenew now "
          "alerts when a renewal fails and the DNS migration checklist covers challenge records.",
          S("merchant-dashboard") + ["ticket:INC-1001", "config:dashboard.tls_autorenew"] + P("emma.novak"),
          links=[("NB1", "follow_up")])
    L(("NB2", "B: near-miss expired certificate"))
    b.add("NB3", "2024-06-05 10:00", "meetings", "decision",
          "Decision: application secrets move from our self-run Vault cluster to the cloud provider's "
          "KMS-backed secrets manager. Card vault keys in the HSM are out of scope.",
          S("api-gateway") + ["decision:secrets-manager"] + team("platform") + P("priya.nair"))
    L(("NB3", "K1: near-miss key-management decision"))
    # --- for C: v1 onboarding, acquirer webhook secret, Fieldhouse follow-on
    b.add("LC1", "2024-02-13 10:30", "confluence", "design_doc",
          "Onboarding v1 partner import is being phased out: partners email a CSV of applications and ops "
          "uploads it by hand. Each row still goes through full document checks.",
          S("onboarding") + ["component:onboarding-v1"] + P("luis.romero"))
    L(("LC1", "C: v1 partner import"))
    b.add("NC1", "2024-07-16 13:00", "jira", "security_review",
          "PAY-1610: the Cobalt webhook signing secret hasn't been rotated since launch, and "
          "verify_acquirer_webhook accepts only one active secret, so rotating it needs downtime.",
          S("payments") + ["ticket:PAY-1610", "fn:verify_acquirer_webhook"] + P("lena.fischer"))
    L(("NC1", "C: near-miss webhook signature"))
    b.add("NC2", "2024-08-01 11:30", "github", "patch",
          "PR payments#2240: verify_acquirer_webhook accepts two secrets during a rotation window; rotation "
          "runbook updated. Fixes PAY-1610.",
          S("payments") + ["pr:payments#2240", "fn:verify_acquirer_webhook", "ticket:PAY-1610"] + P("dev.raman"),
          links=[("NC1", "fixes")])
    L(("NC2", "C: near-miss webhook signature"))
    b.add("NC3", "2025-02-04 14:50", "slack", "discussion",
          "#onboarding: Fieldhouse asks whether they can send applications for Canadian merchants through the "
          "partner webhook. Not yet: we don't have a Canadian KYC flow.",
          S("onboarding") + ["customer:fieldhouse-pos"] + P("ines.duarte"))
    L(("NC3", "C: same customer, unrelated"))
    # --- for D: v1 float amounts, JPY display, statement rounding
    b.add("LD1", "2024-01-10 15:00", "jira", "bug_report",
          "LED-811: ledger v1 still stores amounts as floats in the legacy reports table, so CSV exports show "
          "totals like 10.299999 for older merchants.",
          S("ledger", "reporting") + ["ticket:LED-811", "component:ledger-v1"] + P("zoe.lindqvist"))
    L(("LD1", "D: v1 float amounts"))
    b.add("ND1", "2024-10-21 10:00", "jira", "bug_report",
          "LED-955: JPY amounts appear as 120,000 yen instead of 1,200 yen on the merchant dashboard; "
          "format_amount_display assumes two decimal places for every currency.",
          S("ledger", "merchant-dashboard") + ["ticket:LED-955", "fn:format_amount_display"] + P("emma.novak"))
    L(("ND1", "D: near-miss currency rounding"))
    b.add("ND2", "2024-10-24 16:00", "github", "patch",
          "PR dashboard#781: format_amount_display reads the minor-unit exponent from the currency table "
          "(0 for JPY and KRW). Fixes LED-955.",
          S("merchant-dashboard") + ["pr:dashboard#781", "fn:format_amount_display", "ticket:LED-955"]
          + P("emma.novak"), links=[("ND1", "fixes")])
    L(("ND2", "D: near-miss currency rounding"))
    b.add("ND3", "2025-01-21 11:00", "salesforce", "customer_complaint",
          "Summit Ski Rentals: the monthly statement total is a cent off the sum of its lines (REP-233). Not "
          "much money, but their accountant wants the statement to add up.",
          S("reporting") + ["customer:summit-ski-rentals", "ticket:REP-233"] + P("marco.bellini"))
    L(("ND3", "D: near-miss rounding complaint"))
    # --- for E: card-testing velocity rule, rules engine v1
    b.add("NE1", "2024-08-06 14:00", "meetings", "decision",
          "Risk decision: card-testing rule, fraud.card_attempt_velocity blocks a card fingerprint after 5 "
          "declines in 10 minutes at checkout (RISK-131).",
          S("fraud", "payments") + ["config:fraud.card_attempt_velocity", "ticket:RISK-131",
                                    "decision:card-attempt-velocity"] + P("omar.haddad"))
    L(("NE1", "E: near-miss velocity rule"))
    b.add("NE2", "2024-08-22 13:00", "salesforce", "customer_complaint",
          "Bluefin Sushi: regular customers are being blocked after a couple of failed taps on an old card "
          "reader. Seems related to the new card-testing rule (RISK-131).",
          S("fraud") + ["customer:bluefin-sushi", "ticket:RISK-131"] + P("ana.silva"))
    L(("NE2", "E: near-miss velocity rule complaint"))
    b.add("LE1", "2024-03-05 10:00", "jira", "discussion",
          "Rules engine v1 backtests take nine hours on a month of payouts, so risk can't test a rule change "
          "the same day. Tracking the move to the v2 engine.",
          S("fraud") + ["component:fraud-rules-v1"] + P("yuki.sato"))
    L(("LE1", "E: v1 rules engine"))
    # --- for F: gateway header logging
    b.add("NF1", "2024-04-30 10:00", "jira", "security_review",
          "SEC-241: API gateway request logs include the Authorization header for a few legacy clients. "
          "Redaction added to the log shipper via gateway.log_redact_headers.",
          S("api-gateway") + ["ticket:SEC-241", "config:gateway.log_redact_headers"] + P("lena.fischer"))
    L(("NF1", "F: near-miss secrets in logs"))
    # --- for G: Redis near-miss, v1 rate limiter
    b.add("LG1", "2024-02-21 10:00", "jira", "bug_report",
          "PLAT-512: the v1 rate limiter keeps in-process counters per pod, so a merchant effectively gets "
          "24 times their limit. Fine for now, tracking a shared limiter.",
          S("api-gateway") + ["ticket:PLAT-512", "component:ratelimit-v1"] + P("priya.nair"))
    L(("LG1", "G: v1 rate limiter"))
    b.add("NG1", "2024-05-28 22:00", "incidents", "incident",
          "INC-902 (SEV2): payout workers stalled for 25 minutes during the Redis minor-version upgrade and "
          "resumed after a restart; payouts made the cutoff.",
          S("payouts") + ["ticket:INC-902"] + P("ben.oyelaran"))
    L(("NG1", "G: near-miss Redis maintenance"))


# ------------------------------------------------------------------------------- background

THREADS = [  # opener, replies in the order they would come
    ("Has anyone looked at the {topic} alerts since Tuesday's deploy? Error rate doubled in eu-west.",
     ["+1, seeing it too. Rolling back the deploy in eu-west to check.",
      "Looked at the dashboards: most of it is one merchant retrying in a tight loop.",
      "Rollback fixed the rest, opening a ticket for the root cause."]),
    ("Quick poll: do we still need the feature flag for {topic}, or can we delete it?",
     ["Flag is at 100% everywhere, safe to delete.", "Keep it until the EU rollout is done next week.",
      "OK, deleting it in my cleanup PR after that."]),
    ("Heads up: I'm merging the {topic} refactor this afternoon, shout if you have open PRs touching it.",
     ["I have one open, will rebase after you merge.", "Can you wait until after the release cut at 15:00?",
      "Sure, merging at 15:30 then."]),
    ("Who owns the runbook for {topic}? The link in the alert goes to a deleted page.",
     ["Owner is {team}. It moved to the new wiki space, I'll fix the link.", "Fixed, thanks for flagging."]),
    ("Support is asking whether {topic} changed for EU merchants last week. Anyone know?",
     ["Nothing changed on our side as far as I know.",
      "There was a config change on Wednesday, but only for newly onboarded merchants.",
      "I'll reply to support in the ticket."]),
    ("Staging is broken for {topic} again, migrations ran out of order. Can someone from {team} look?",
     ["Pairing on it now with {p}.", "Reverted the migration in staging, should be green in 10 minutes.",
      "Green again, thanks."]),
    ("Draft doc for {topic} is up, comments welcome before Thursday's review.",
     ["Left comments, mostly on the rollout plan.", "Looks good, one question on the cost at 10x volume.",
      "Can we add a section on the on-call impact?"]),
    ("{cust} says {topic} behaves differently at their second location. Is that expected?",
     ["Not expected. Do we have a ticket? Otherwise I'll open one.",
      "Second location is on older terminal firmware, that would explain it.",
      "Confirmed, it's the firmware. Support will walk them through the update."]),
    ("Dashboards for {topic} look flat since the weekend. Did the metrics exporter break?",
     ["Same for us, looks like the exporter.", "Exporter pod was OOM-killed; restarted it and bumped the memory limit.",
      "Back now, thanks."]),
]
DONE = ["finished the {topic} tests", "merged the {topic} cleanup", "closed out two bugs on {topic}",
        "shipped the {topic} change to canary", "wrote the runbook section for {topic}",
        "was on call, quiet night"]
DOING = ["pairing on {topic}", "reviewing PRs for {topic}", "starting on {topic}",
         "load-testing {topic} in staging", "chasing a flaky test in {topic}"]
BLOCKERS = ["none", "none", "none", "waiting on Cobalt sandbox credentials", "staging DB was down for an hour",
            "need a security review slot", "waiting for design sign-off", "need access to the prod read replica"]

FEATURES = [
    ("payments", "pay by bank (ACH debit) at checkout", "card fees on large invoices are eating their margin"),
    ("payments", "automatic card updates for stored cards", "about 4% of recurring charges fail on expired cards"),
    ("payouts", "same-day payouts on weekends", "they pay staff on Saturdays"),
    ("payouts", "payouts split across two bank accounts", "each location banks separately"),
    ("reporting", "a QuickBooks Online export", "their bookkeeper re-keys statements by hand"),
    ("reporting", "per-location reports", "regional managers only see totals today"),
    ("merchant-dashboard", "custom roles", "front-desk staff shouldn't be able to refund"),
    ("merchant-dashboard", "bulk refunds from a CSV", "they cancel whole bookings when the weather turns"),
    ("notifications", "branded receipt emails with their logo", "customers think the plain receipts are phishing"),
    ("onboarding", "adding a location without redoing KYC", "they open three or four sites a quarter"),
    ("fraud", "their own review rule for high-value orders", "they want to look at orders over $2,000 themselves"),
]
COMPLAINTS = [
    ("payouts", "Friday's payout arrived on Tuesday after the bank holiday and nobody told them"),
    ("notifications", "receipt emails to their customers have been landing in spam since last week"),
    ("merchant-dashboard", "staff get logged out of the dashboard every 15 minutes during busy service"),
    ("merchant-dashboard", "they lost a dispute because the evidence upload kept failing"),
    ("payments", "contactless payments were declined on two terminals for about an hour on Saturday"),
    ("reporting", "the fees on the monthly statement don't match the invoice"),
    ("payments", "Apple Pay stopped working on their web checkout after a Safari update"),
    ("onboarding", "their new location has been waiting on verification for nine days"),
]
ASKS = ["They want a call with someone technical.", "Asked for a credit on this month's fees.",
        "Wants a written explanation for the owner.", "Hannah from support is following up."]
DESIGNS = [
    ("payments", "Network tokens for stored cards",
     "Provision Visa and Mastercard network tokens for cards on file so reissued cards keep working; "
     "expected approval-rate lift of 1.5 to 2%."),
    ("payments", "Surcharging in the US",
     "Support surcharges in the states that allow them, capped at 3%, with the disclosure on receipts."),
    ("ledger", "Incremental balance snapshots",
     "Replace nightly full snapshots with incremental ones keyed on the last entry id; month-end close "
     "should drop from four hours to under one."),
    ("payouts", "Instant payouts to debit cards",
     "Offer instant payouts to debit cards for a 1.5% fee, reusing the existing payout risk checks."),
    ("onboarding", "Beneficial owner collection",
     "Collect every owner above 25% in one form with autosave, as the FinCEN rule requires."),
    ("fraud", "Device fingerprinting in the mobile SDKs",
     "Collect a privacy-reviewed device fingerprint in the iOS and Android SDKs and feed it into checkout "
     "risk scoring."),
    ("notifications", "Webhook delivery v2",
     "Per-merchant delivery queues, exponential backoff for up to 72 hours and a replay button in the "
     "dashboard."),
    ("reporting", "Warehouse sync via change data capture",
     "Stream ledger and dispute changes into the warehouse with CDC instead of nightly dumps."),
    ("merchant-dashboard", "Custom roles and permissions",
     "Merchant admins define roles from about 40 permissions; exports and refunds become separate "
     "permissions."),
    ("api-gateway", "API versioning policy",
     "Date-based API versions pinned per API key, each supported for 12 months after the next one ships."),
]
BG_INCIDENTS = [
    ("payments", "SEV3: 3DS2 challenge failures for Mastercard cards in the UK for 40 minutes; the issuer "
                 "access control server was degraded, nothing to fix on our side."),
    ("notifications", "SEV3: receipt emails delayed by up to two hours after the email provider throttled "
                      "our sending domain."),
    ("reporting", "SEV3: daily payout reconciliation CSVs generated six hours late; the warehouse sync job "
                  "was stuck on a lock."),
    ("merchant-dashboard", "SEV3: dashboard login failing for SSO merchants for 25 minutes after the "
                           "identity provider rolled its signing key."),
    ("payouts", "SEV2: the payout batch for 3,200 merchants was submitted 40 minutes after the bank cutoff; "
                "payouts landed a day late."),
    ("api-gateway", "SEV3: 5xx rate at 2% for 15 minutes during a gateway deploy; a bad readiness probe sent "
                    "traffic to pods that weren't warm yet."),
]
BG_DECISIONS = [
    ("decision:status-page-vendor", "api-gateway", "sre",
     "Decision: the public status page moves to Statusly; incident commanders post an update within 15 "
     "minutes of any SEV1 or SEV2."),
    ("decision:feature-flag-service", "payments", "platform",
     "Decision: feature flags live in the self-hosted Flagpole service; flags that have been at 100% for "
     "90 days must be removed."),
    ("decision:ci-runner", "api-gateway", "platform",
     "Decision: CI moves to self-hosted runners on spot instances, expected to halve CI cost; flaky-test "
     "budget is 1%."),
    ("decision:payouts-bank-partner", "payouts", "money-movement",
     "Decision: add Harbourline Bank as a second payouts partner for GBP and EUR; First Calder Bank keeps "
     "USD."),
    ("decision:api-versioning", "api-gateway", "platform",
     "Decision: adopt date-based API versions pinned per API key, each supported for 12 months."),
    ("decision:dispute-evidence-format", "merchant-dashboard", "dashboard",
     "Decision: dispute evidence is submitted as one generated PDF per dispute rather than loose "
     "attachments, to match what the card networks accept."),
]
MISC_RELEASE = ["dependency updates", "faster cold starts", "new latency metrics", "less log noise",
                "Python 3.12 runtime", "clearer error messages"]
RETRO_GOOD = ["the canary rollout caught a bad config", "on-call was quiet", "design reviews happened early",
              "we closed more bugs than we opened"]
RETRO_BAD = ["too many priorities mid-sprint", "staging was flaky all week", "reviews sat for days",
             "the release slipped for a missing migration"]


def wtime(rng: random.Random, lo: int = START, hi: int = END - 86400) -> int:
    """A working-hours timestamp (Mon-Fri, 08:00-18:00 UTC) in [lo, hi]."""
    for _ in range(100):
        t = rng.randint(lo, hi)
        d = datetime.fromtimestamp(t, UTC)
        if d.weekday() < 5:
            base = d.replace(hour=8, minute=0, second=0)
            return int(base.timestamp()) + rng.randint(0, 10 * 3600 - 1)
    return lo


def pick_service(rng: random.Random) -> str:
    return rng.choices(SERVICE_ORDER, weights=SERVICE_WEIGHTS)[0]


def pick_customer(rng: random.Random) -> str:
    return rng.choices(CRM_CUSTOMERS, weights=[1 / (i + 1) ** 0.8 for i in range(len(CRM_CUSTOMERS))])[0]


class Names:
    """Fresh background ticket / PR numbers that never collide with a planted one."""

    def __init__(self, b: Builder, rng: random.Random) -> None:
        self.b, self.rng = b, rng

    def ticket(self, prefix: str) -> str:
        lo, hi = (880, 1099) if prefix == "INC" else (100, 1999)
        while True:
            name = f"ticket:{prefix}-{self.rng.randint(lo, hi)}"
            if name not in self.b.used_rare:
                self.b.used_rare.add(name)
                return name

    def pr(self, repo: str) -> str:
        while True:
            name = f"pr:{repo}#{self.rng.randint(120, 2400)}"
            if name not in self.b.used_rare:
                self.b.used_rare.add(name)
                return name


def background(b: Builder) -> None:
    rng = random.Random(f"{SEED}:background")
    names = Names(b, rng)
    n = 0

    def key(prefix: str) -> str:
        nonlocal n
        n += 1
        return f"{prefix}{n:04d}"

    def fill(tpl: str, svc: str, extra: dict | None = None) -> str:
        s = SERVICES[svc]
        vals = dict(topic=rng.choice(s["topics"]), team=s["team"], p=first(rng.choice(s["people"])),
                    cust=CUSTOMERS[pick_customer(rng)])
        vals.update(extra or {})
        return tpl.format(**vals)

    # -- standups
    for _ in range(52):
        svc = pick_service(rng)
        s = SERVICES[svc]
        p1, p2 = rng.sample(s["people"], 2)
        t1, t2 = rng.sample(s["topics"], 2)
        text = (f"{s['team'].capitalize()} standup. {first(p1)}: {rng.choice(DONE).format(topic=t1)}. "
                f"{first(p2)}: {rng.choice(DOING).format(topic=t2)}. Blockers: {rng.choice(BLOCKERS)}.")
        b.add(key("bs"), wtime(rng), rng.choice(["meetings", "slack"]), "standup", text,
              S(svc) + team(s["team"]) + P(p1, p2))

    # -- slack threads with replies
    for _ in range(32):
        svc = pick_service(rng)
        s = SERVICES[svc]
        opener, replies = rng.choice(THREADS)
        cust = pick_customer(rng)
        author = rng.choice(s["people"])
        vals = dict(cust=CUSTOMERS[cust], topic=rng.choice(s["topics"]))
        ents = S(svc) + P(author) + (["customer:" + cust] if "{cust}" in opener else [])
        t = wtime(rng)
        root = b.add(key("bt"), t, "slack", "discussion", fill(opener, svc, vals), ents)
        prev = root
        for reply in replies[:rng.choice([1, 2, 2, 3, 3])]:
            t = t + rng.randint(120, 6 * 3600)
            if t > END:
                break
            replier = rng.choice([p for p in s["people"] + ["ben.oyelaran"] if p != author])
            target = root if rng.random() < 0.75 else prev
            prev = b.add(key("br"), t, "slack", "discussion", fill(reply, svc, vals),
                         S(svc) + P(replier), links=[(target, "reply")])

    # -- bug -> patch -> review -> release flows (the common rare entities live here)
    flows = [(svc, bug) for svc in SERVICE_ORDER for bug in SERVICES[svc]["bugs"]]
    rng.shuffle(flows)
    patched: dict[str, list[tuple[int, str, str]]] = {svc: [] for svc in SERVICE_ORDER}
    deferrable = []
    for svc, (title, fix) in flows[:36]:
        s = SERVICES[svc]
        tk = names.ticket(s["tkt"])
        tid = tk.split(":", 1)[1]
        reporter = rng.choice(s["people"] + ["hannah.cole"])
        t0 = wtime(rng, START, END - 40 * 86400)
        cust = pick_customer(rng)
        with_cust = rng.random() < 0.35
        extra = f" First reported by {CUSTOMERS[cust]}." if with_cust else ""
        bug = b.add(key("bb"), t0, "jira", "bug_report",
                    f"{tid}: {title}.{extra} {rng.choice(['Affects a handful of merchants.', 'Seen in production since the last release.', 'Repro steps in the ticket.', 'Low volume but noisy for support.'])}",
                    S(svc) + [tk] + P(reporter) + (["customer:" + cust] if with_cust else []))
        if rng.random() < 0.15:
            deferrable.append((svc, tid, tk, title, t0))
            continue
        pr = names.pr(s["repo"])
        author = rng.choice(s["people"])
        t1 = t0 + rng.randint(1, 12) * 86400 + rng.randint(0, 6 * 3600)
        links = [(bug, "fixes")] if rng.random() < 0.6 else []
        fixword = "Fixes" if links else "Refs"
        patch = b.add(key("bp"), t1, "github", "patch",
                      f"PR {pr.split(':', 1)[1]}: {fix[0].upper() + fix[1:]}. {fixword} {tid}.",
                      S(svc) + [pr, tk] + P(author), links=links)
        if rng.random() < 0.45:
            reviewer = rng.choice([p for p in s["people"] if p != author] or ["maya.okafor"])
            comment = rng.choice([
                "LGTM once the migration is split out.", "Can we get a test for the failure path?",
                "Approving, but please add a metric so we can see this in production.",
                "Looks right. Watch the canary for an hour before full rollout.",
                "Nit: the log line should include the merchant id."])
            b.add(key("bv"), t1 + rng.randint(1800, 2 * 86400), "github", "review",
                  f"Review on {pr.split(':', 1)[1]}: {comment}",
                  S(svc) + [pr] + P(reviewer), links=[(patch, "references")] if rng.random() < 0.5 else [])
        patched[svc].append((t1, pr, fix))

    # -- deferrals of some of those bugs
    for svc, tid, tk, title, t0 in deferrable:
        s = SERVICES[svc]
        reason = rng.choice(["the team is on the migration until month end", "it only affects a few merchants",
                             "there's a workaround documented for support", "the owner is on leave"])
        b.add(key("bd"), t0 + rng.randint(3, 20) * 86400, rng.choice(["meetings", "jira"]), "deferral",
              f"Sprint planning, {s['team']}: {tid} ({title[0].lower() + title[1:]}) moves to next sprint; {reason}.",
              S(svc) + [tk] + team(s["team"]))

    # -- releases, bundling whatever was patched in the weeks before
    versions = {svc: [rng.randint(1, 6), rng.randint(0, 9), 0] for svc in SERVICE_ORDER}
    for _ in range(22):
        svc = pick_service(rng)
        s = SERVICES[svc]
        t = wtime(rng, START + 30 * 86400)
        recent = [x for x in patched[svc] if t - 30 * 86400 < x[0] < t]
        v = versions[svc]
        v[1] += 1
        v[2] = rng.randint(0, 3)
        items = [f"{fix.split(' and ')[0]} ({pr.split(':', 1)[1]})" for _, pr, fix in recent[:2]]
        items.append(rng.choice(MISC_RELEASE))
        b.add(key("bl"), t, "github", "release",
              f"{s['repo']} {v[0]}.{v[1]}.{v[2]} released: {'; '.join(items)}.",
              S(svc) + [pr for _, pr, _ in recent[:2]] + P(rng.choice(s["people"])))

    # -- CRM: feature requests, account notes, complaints
    for _ in range(14):
        svc, feat, why = rng.choice(FEATURES)
        cust = pick_customer(rng)
        b.add(key("bf"), wtime(rng), rng.choice(["salesforce", "salesforce", "jira"]), "feature_request",
              f"{CUSTOMERS[cust]} asked for {feat}: {why}. {rng.choice(['Not on the roadmap yet.', 'Logged for the next planning round.', 'Three other accounts asked for the same thing this quarter.'])}",
              S(svc) + ["customer:" + cust] + P(rng.choice(["ana.silva", "marco.bellini"])) + team("sales"))
    for _ in range(22):
        cust = pick_customer(rng)
        am = rng.choice(["ana.silva", "marco.bellini"])
        c = CUSTOMERS[cust]
        kind = rng.random()
        if kind < 0.4:
            svc, feat, _ = rng.choice(FEATURES)
            text = (f"QBR with {c}: card volume {rng.choice(['up', 'up', 'down'])} {rng.randint(3, 28)}% quarter "
                    f"over quarter, {rng.randint(2, 40)} locations live. They asked about {feat}; promised an "
                    f"answer by the end of the month.")
        elif kind < 0.6:
            svc = "payments"
            text = (f"Renewal call with {c}: they'll sign another 24 months if we hold the blended rate at "
                    f"{rng.randint(235, 290)} bps. Legal is reviewing the new DPA.")
        elif kind < 0.8:
            svc = "onboarding"
            text = (f"Onboarding check-in with {c}: {rng.randint(2, 9)} locations live, the rest waiting on "
                    f"terminals. Front-desk training booked for next week.")
        else:
            svc = "payments"
            text = (f"Pricing discussion with {c}: a competitor offered interchange-plus {rng.randint(20, 45)} "
                    f"bps. Asked finance for a counter-offer before Friday.")
        b.add(key("bc"), wtime(rng), "salesforce", rng.choice(["meeting_notes", "meeting_notes", "discussion"]),
              text, S(svc) + ["customer:" + cust] + P(am) + team("sales"))
    for _ in range(12):
        svc, what = rng.choice(COMPLAINTS)
        cust = pick_customer(rng)
        b.add(key("bk"), wtime(rng), "salesforce", "customer_complaint",
              f"{CUSTOMERS[cust]}: {what}. {rng.choice(ASKS)}",
              S(svc) + ["customer:" + cust] + P(rng.choice(["ana.silva", "marco.bellini", "hannah.cole"])))

    # -- design docs with an architecture review a week or two later
    for svc, title, summary in DESIGNS:
        s = SERVICES[svc]
        author = rng.choice(s["people"])
        t = wtime(rng, START, END - 30 * 86400)
        doc = b.add(key("bg"), t, "confluence", "design_doc", f"Design: {title}. {summary}",
                    S(svc) + team(s["team"]) + P(author))
        other = rng.choice([p for p in s["people"] if p != author] or ["priya.nair"])
        q = rng.choice(["the rollout order across regions", "who owns the on-call for it",
                        "whether we need a data migration", "the cost at 10x volume"])
        b.add(key("bm"), t + rng.randint(5, 15) * 86400, "meetings", "meeting_notes",
              f"Architecture review: {title}. Agreed to proceed behind a feature flag; {first(other)} writes the "
              f"rollout plan. Open question: {q}.",
              S(svc) + team(s["team"]) + P(author, other),
              links=[(doc, "references")] if rng.random() < 0.5 else [])
        if rng.random() < 0.5:
            b.add(key("bs"), t + rng.randint(3, 25) * 86400, "jira", "security_review",
                  f"Threat model review of '{title}': no blockers. Asked for rate limits on the new endpoints and "
                  f"audit logging of admin actions.",
                  S(svc) + team("security") + P("lena.fischer"))

    # -- recurring meetings
    for _ in range(16):
        svc = pick_service(rng)
        s = SERVICES[svc]
        r = rng.random()
        if r < 0.35:
            text = (f"Weekly incident review: {rng.randint(2, 6)} incidents last week, none above SEV3. "
                    f"Action items from older postmortems: {rng.randint(1, 5)} still open.")
            ents = S(svc) + team("sre") + P("ben.oyelaran", "priya.nair")
        elif r < 0.7:
            text = (f"{s['team'].capitalize()} retro. Went well: {rng.choice(RETRO_GOOD)}. Didn't: "
                    f"{rng.choice(RETRO_BAD)}. Action: {first(rng.choice(s['people']))} to "
                    f"{rng.choice(['trim the sprint scope', 'fix the staging seed data', 'set a review SLA of one day'])}.")
            ents = S(svc) + team(s["team"]) + P(*s["people"][:2])
        else:
            t1, t2, t3 = rng.sample(s["topics"], 3)
            text = f"Quarterly planning, {s['team']}: the top three for next quarter are {t1}, {t2} and {t3}."
            ents = S(svc) + team(s["team"]) + P(s["people"][0], "sam.whitfield")
        b.add(key("bm"), wtime(rng), "meetings", "meeting_notes", text, ents)
    for q, t in (("Q1", "2024-04-04 16:00"), ("Q2", "2024-07-11 16:00"), ("Q3", "2024-10-10 16:00"),
                 ("Q4", "2025-01-16 16:00"), ("Q1", "2025-04-10 16:00")):
        b.add(key("ba"), t, "meetings", "meeting_notes",
              f"All-hands: Carl shared {q} numbers, payment volume up {rng.randint(6, 19)}% and "
              f"{rng.randint(180, 420)} new merchants; hiring {rng.randint(3, 9)} engineers next quarter.",
              S("payments") + P("carl.berg"))

    # -- background incidents (a couple with postmortems), security reviews, decisions
    for svc, text in BG_INCIDENTS:
        tk = names.ticket("INC")
        t = wtime(rng)
        sev, rest = text.split(": ", 1)
        inc = b.add(key("bi"), t, "incidents", "incident", f"{tk.split(':', 1)[1]} ({sev}): {rest}",
                    S(svc) + [tk] + P("ben.oyelaran"))
        if rng.random() < 0.4:
            b.add(key("bq"), t + rng.randint(4, 10) * 86400, "confluence", "postmortem",
                  f"Postmortem {tk.split(':', 1)[1]}: contributing factors and three follow-up actions, all owned by "
                  f"{SERVICES[svc]['team']}. No customer data affected.",
                  S(svc) + [tk] + team(SERVICES[svc]["team"]), links=[(inc, "follow_up")])
    for _ in range(6):
        svc = pick_service(rng)
        if rng.random() < 0.5:
            text = (f"Quarterly access review for {svc}: removed {rng.randint(2, 11)} stale production accounts; "
                    f"two service accounts now use workload identity.")
        else:
            text = (f"Dependency audit for {svc}: {rng.randint(1, 6)} high CVEs in transitive dependencies, all "
                    f"patched except one in the PDF library with no reachable exploit path.")
        b.add(key("bs"), wtime(rng), "jira", "security_review", text, S(svc) + team("security") + P("lena.fischer"))
    for ent, svc, tm, text in BG_DECISIONS:
        b.add(key("bn"), wtime(rng), rng.choice(["confluence", "meetings"]), "decision", text,
              S(svc) + [ent] + team(tm) + P(rng.choice(SERVICES[svc]["people"])))


# ---------------------------------------------------------------------------------- queries

def queries() -> list[dict]:
    def chain(qid, text, svc, direction, budget=4000, **f):
        return dict(qid=qid, type="chain", text=text, filters={"entities_any": [f"service:{svc}"], **f},
                    as_of=None, direction=direction, budget_tokens=budget)

    def fact(qid, typ, text, svc, as_of=None, budget=1500):
        return dict(qid=qid, type=typ, text=text, filters={"entities_any": [f"service:{svc}"]},
                    as_of=as_of, direction="back", budget_tokens=budget)

    return [
        chain("q01", "What chain of decisions led to the double-charge vulnerability in payment retries?",
              "payments", "back"),
        chain("q02", "Trace the card vault key rotation problem from the original design through the January "
                     "tokenization outage to the fix.", "card-vault", "both"),
        chain("q03", "How did merchants get onboarded through unsigned partner webhooks without KYC checks, and "
                     "where did that come from?", "onboarding", "back"),
        chain("q04", "Why were Meridian Travel's GBP payouts a few pence short, and what led to it?",
              "ledger", "back"),
        chain("q05", "What happened as a result of tightening the payout velocity limit in January 2025?",
              "fraud", "forward", time_from=T("2025-01-01")),
        chain("q06", "Why did customer phone numbers and email addresses end up in the notification service "
                     "logs?", "notifications", "back"),
        chain("q07", "Why did the API gateway reject every request with 429 during the Redis failover?",
              "api-gateway", "back"),
        fact("q08", "current", "Which HSM vendor holds the card vault keys now?", "card-vault"),
        fact("q09", "as_of", "Which HSM vendor held the card vault keys in mid-December 2024?", "card-vault",
             as_of=T("2024-12-15")),
        fact("q10", "current", "What database does the ledger run on now?", "ledger"),
        fact("q11", "as_of", "What was the plan for the ledger database as of October 2024?", "ledger",
             as_of=T("2024-10-01")),
        fact("q12", "current", "Which KYC provider checks new merchants today?", "onboarding"),
        fact("q13", "as_of", "How long were application logs kept as of August 2024?", "api-gateway",
             as_of=T("2024-08-01")),
        fact("q14", "current", "Who gets paged for a SEV1 incident?", "payments"),
    ]


# What a good answer contains, by planted key (for the README only; never written as truth).
FACT_ANSWERS = {
    "q08": ("K1c", ["K1a", "K1b"]), "q09": ("K1b", ["K1a"]), "q10": ("K2c", ["K2a", "K2b"]),
    "q11": ("K2b", ["K2a"]), "q12": ("K3c", ["K3a", "K3b"]), "q13": ("K4a", []),
    "q14": ("K5b", ["K5a"]),
}

# --------------------------------------------------------------------------------- assembly


def assemble(b: Builder) -> tuple[list[dict], dict[str, str]]:
    """Sort by arrival (time + a small delay, a few events late), assign ids, resolve links."""
    rng = random.Random(f"{SEED}:arrival")
    arrival = {}
    for k in b.order:
        delay = rng.expovariate(1 / 1800)
        if rng.random() < 0.02:
            delay += rng.uniform(1, 4) * 86400           # a few events arrive days late
        arrival[k] = b.ev[k]["time"] + int(delay)
    while True:                                         # a link target must come on an earlier line
        changed = False
        for k in b.order:
            for tgt, _ in b.ev[k]["links"]:
                if arrival[tgt] >= arrival[k]:
                    arrival[k] = arrival[tgt] + 1
                    changed = True
        if not changed:
            break
    keys = sorted(b.order, key=lambda k: (arrival[k], b.ev[k]["time"], k))
    ids = {k: f"e{i:06d}" for i, k in enumerate(keys)}
    rows = []
    for k in keys:
        e = b.ev[k]
        rows.append({"id": ids[k], "time": e["time"], "source": e["source"], "kind": e["kind"],
                     "tokens": tokens_of(k, e), "entities": e["entities"],
                     "links": [{"to": ids[t], "type": ty} for t, ty in e["links"]], "text": e["text"]})
    return rows, ids


def build(out_dir) -> dict:
    """Generate the corpus into `out_dir`; returns a summary (counts, ids of planted events)."""
    STORIES.clear(), DECISIONS.clear(), LOOKALIKES.clear()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = Builder()
    chains(b)
    decisions(b)
    lookalikes(b)
    background(b)
    rows, ids = assemble(b)
    for r in rows:                                         # every person / customer is on the cast list
        for x in r["entities"]:
            typ, name = x.split(":", 1)
            assert (typ != "person" or name in PEOPLE) and (typ != "customer" or name in CUSTOMERS), x
    qs = queries()
    tok = {r["id"]: r["tokens"] for r in rows}
    for st in STORIES:                                     # every chain fits its query's budget
        q = next(q for q in qs if q["qid"] == st["qid"])
        assert sum(tok[ids[k]] for k in st["keys"]) <= q["budget_tokens"], st["name"]

    enc = HashingEncoder(dim=DIM)
    vecs = enc.encode([r["text"] for r in rows]).astype(np.float32)
    qvecs = enc.encode([q["text"] for q in qs]).astype(np.float32)

    with open(out / "events.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for q in qs:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    np.save(out / "vectors.npy", vecs)
    np.save(out / "query_vectors.npy", qvecs)
    used_sources = [s for s in SOURCES if any(r["source"] == s for r in rows)]
    used_kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    meta = {"format": "orgmem-v1", "name": NAME, "dim": DIM, "n_events": len(rows), "n_queries": len(qs),
            "sources": used_sources, "kinds": used_kinds,
            "params": {"generator": "examples/make_sample_corpus.py", "seed": SEED, "encoder": enc.name,
                       "encoder_spec": spec_of(enc),
                       "company": "Larkspur Pay", "time_from": day(min(r["time"] for r in rows)),
                       "time_to": day(max(r["time"] for r in rows))}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8", newline="\n")
    (out / "README.md").write_text(readme(b, ids, qs, tok), encoding="utf-8", newline="\n")
    return dict(n_events=len(rows), n_queries=len(qs), ids=ids, stories=STORIES, decisions=DECISIONS,
                tokens=tok)


def readme(b: Builder, ids: dict, qs: list[dict], tok: dict) -> str:
    def d(k):
        return day(b.time(k))

    def ev(k):
        e = b.ev[k]
        return f"`{ids[k]}` {d(k)} {e['source']}/{e['kind']}"

    L = ["# Larkspur Pay sample corpus (orgmem-v1)", "",
         "Generated by `examples/make_sample_corpus.py` (do not edit by hand; rerun the script). "
         "This file is for people: no part of fastctx reads it.", "",
         "**Larkspur Pay** is a fictional mid-size payments company: card processing through the (equally "
         "fictional) Cobalt acquirer, a card vault, merchant onboarding with KYC, payouts, fraud scoring, "
         "notifications, an API gateway, reporting and a merchant dashboard. The corpus covers "
         f"{day(START)} to {day(END)}: {len(ids)} events from GitHub, Jira, Confluence, Slack, Salesforce, "
         "meetings and the incident tracker, each with its text. Vectors come from "
         "`fastctx.encoder.HashingEncoder(dim=256)`.", "",
         "Most of the corpus is background: standups, Slack threads with replies, bug -> patch -> review -> "
         "release flows, CRM notes, releases, incidents and security reviews. Planted in it:", "",
         "## Causal chains", "",
         "Only some consecutive steps carry an explicit link; the others connect through shared rare entities "
         "(function, ticket, config key, PR, customer) and wording.", ""]
    for st in STORIES:
        total = sum(tok[ids[k]] for k in st["keys"])
        L.append(f"### {st['name']}. {st['title']} (query {st['qid']}, {total} tokens)")
        L.append("")
        for k in st["keys"]:
            e = b.ev[k]
            lk = ", ".join(f"{ty} -> `{ids[t]}`" for t, ty in e["links"])
            L.append(f"- {ev(k)}{' (' + lk + ')' if lk else ''}: {e['text'][:110]}...")
        L.append("")
    L += ["## Decisions that changed", "",
          "Later versions carry a `supersedes` link unless marked implicit (same `decision:` entity, later "
          "time, no link).", ""]
    for dd in DECISIONS:
        L.append(f"- `{dd['entity']}` ({dd['title']}): " + "; ".join(
            f"{ev(k)}{' [implicit]' if how == 'implicit' else ''}" for k, how in dd["versions"])
            + (". Discussions mentioning it: " + ", ".join(f"`{ids[k]}`" for k in dd["discussions"])
               if dd["discussions"] else ""))
    L += ["", "## Look-alikes", "",
          "Older v1 systems, near-miss threads with their own rare entities, and same-day noise:", ""]
    for k, what in LOOKALIKES:
        L.append(f"- `{ids[k]}` {what}")
    L += ["", "## Queries (`queries.jsonl`) and what a good answer contains", ""]
    story_of = {st["qid"]: st for st in STORIES}
    for q in qs:
        if q["qid"] in story_of:
            want = ", ".join(f"`{ids[k]}`" for k in story_of[q["qid"]]["keys"])
            L.append(f"- {q['qid']} ({q['type']}, {q['direction']}): {q['text']} -> {want}")
        else:
            cur, stale = FACT_ANSWERS[q["qid"]]
            when = f" as of {day(q['as_of'])}" if q["as_of"] else ""
            st = ", ".join(f"`{ids[k]}`" for k in stale) or "none"
            L.append(f"- {q['qid']} ({q['type']}{when}): {q['text']} -> current `{ids[cur]}`; stale {st}")
    L.append("")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    info = build(args.out_dir)
    sizes = {f: (Path(args.out_dir) / f).stat().st_size for f in FILES}
    print(f"wrote {info['n_events']} events, {info['n_queries']} queries to {args.out_dir} "
          f"({sum(sizes.values()) / 1024:.0f} KiB: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
