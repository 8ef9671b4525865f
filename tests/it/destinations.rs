//! The destination catalogue end to end, one test per family (analytics, engagement and
//! CRM, ads conversions, mobile, chat, cloud messaging): every script of the family runs in
//! one Keel against its own local HTTP server standing in for the vendor (each script's
//! base-URL setting points there). Each vendor first answers 503, then 429 with its own
//! rate-limit hint, then 2xx: every event is delivered, and the request after the 429 waits
//! for the hint. Then the vendor refuses with a 4xx and its own error text: the event is
//! dead-lettered with that text in the reason, and nothing is retried.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::sink::{Received, Responder, Sink, SinkMode};
use crate::common::*;

/// How a vendor says when to come back after a 429 (always one second here).
#[derive(Clone, Copy)]
enum Limit {
    /// `Retry-After: 1`.
    RetryAfter,
    /// `X-RateLimit-Reset: <unix time + 1>` (Braze).
    ResetAt,
    /// `X-RateLimit-Reset: 1` (seconds left, as Iterable and others send it).
    ResetIn,
}

impl Limit {
    fn header(self) -> String {
        match self {
            Limit::RetryAfter => "Retry-After: 1\r\n".into(),
            Limit::ResetAt => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock")
                    .as_secs();
                format!("X-RateLimit-Reset: {}\r\n", now + 2)
            }
            Limit::ResetIn => "X-RateLimit-Reset: 1\r\n".into(),
        }
    }

    /// The least wait the hint asks for (an epoch second may be almost over).
    fn min_wait(self) -> Duration {
        match self {
            Limit::ResetAt => Duration::from_millis(1000),
            _ => Duration::from_millis(900),
        }
    }
}

/// How long after the 429 a request may still arrive that was sent before it was answered.
const IN_FLIGHT: Duration = Duration::from_millis(150);

/// One destination of a family and its stand-in vendor.
struct Vendor {
    /// The destination definition name (the script's folder).
    kind: &'static str,
    /// Its settings; the string `{base}` anywhere is replaced by the vendor's origin.
    config: Value,
    /// Its rate-limit hint.
    limit: Limit,
    /// Its 2xx body.
    ok_body: &'static str,
    /// Its refusal: status and body; the body's `text` must reach the DLQ reason.
    refusal: (u16, &'static str),
    /// A distinctive part of the refusal body.
    text: &'static str,
    /// Look-ups the script makes while mapping (request target prefix, status, body):
    /// answered as given, outside the phases, and left out of the checks.
    lookups: &'static [(&'static str, u16, &'static str)],
}

impl Vendor {
    fn is_lookup(&self, target: &str) -> bool {
        self.lookups.iter().any(|(p, _, _)| target.starts_with(p))
    }
}

/// The stand-in's phase: how it answers the next request.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    Unavailable,
    Limited,
    Open,
    Refusing,
}

struct Running {
    vendor: Vendor,
    sink: Sink,
    phase: Arc<Mutex<Phase>>,
}

impl Running {
    async fn start(vendor: Vendor) -> Running {
        let phase = Arc::new(Mutex::new(Phase::Unavailable));
        let (p, limit, ok, refusal) = (phase.clone(), vendor.limit, vendor.ok_body, vendor.refusal);
        let lookups = vendor.lookups;
        let sink = Sink::start(SinkMode::Answer(Responder::new(move |target, _| {
            if let Some((_, status, body)) = lookups.iter().find(|(p, _, _)| target.starts_with(p))
            {
                return (*status, String::new(), (*body).into());
            }
            let mut phase = p.lock().expect("phase");
            match *phase {
                Phase::Unavailable => {
                    *phase = Phase::Limited;
                    (
                        503,
                        String::new(),
                        r#"{"message":"service unavailable"}"#.into(),
                    )
                }
                Phase::Limited => {
                    *phase = Phase::Open;
                    (429, limit.header(), r#"{"message":"rate limited"}"#.into())
                }
                Phase::Open => (200, String::new(), ok.into()),
                Phase::Refusing => (refusal.0, String::new(), refusal.1.into()),
            }
        })))
        .await;
        Running {
            vendor,
            sink,
            phase,
        }
    }

    fn id(&self) -> String {
        self.vendor.kind.to_ascii_lowercase()
    }

    fn destination(&self) -> Value {
        let origin = self.sink.url.trim_end_matches("/hook");
        let config = self.vendor.config.to_string().replace("{base}", origin);
        json!({"id": self.id(), "name": format!("{} e2e", self.vendor.kind), "enabled": true,
               "config": serde_json::from_str::<Value>(&config).expect("config"),
               "destinationDefinition": {"name": self.vendor.kind, "displayName": self.vendor.kind}})
    }
}

/// A user's event of `kind` with what the family's vendors key on: ids, email and phone,
/// device and advertising ids, an order.
fn event(kind: &str, user: &str, n: usize) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut e = json!({
        "type": kind,
        "userId": user,
        "anonymousId": format!("anon-{user}"),
        "messageId": format!("{user}-{kind}-{n}"),
        // Now: conversion APIs refuse events older than a few days.
        "timestamp": now,
        "originalTimestamp": now,
        "channel": "web",
        "context": {
            "traits": {"email": format!("{user}@example.com"), "phone": "+15551234567",
                       "firstName": "Ada", "lastName": "Lovelace"},
            "ip": "203.0.113.9",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0",
            "locale": "en-US",
            "library": {"name": "analytics-node", "version": "2.1.0"},
            "page": {"url": "https://shop.example.com/cart", "path": "/cart", "title": "Cart"},
            "device": {"id": format!("device-{user}"), "type": "android", "advertisingId": "38400000-8cf0-11bd-b23e-10b96e40000d",
                       "token": format!("push-token-{user}")},
            "os": {"name": "Android", "version": "14"},
            "app": {"name": "Shop", "version": "5.1.0", "namespace": "com.example.shop"},
            "externalId": [{"type": "appsflyerExternalId", "id": format!("af-{user}")}],
        },
    });
    let m = e.as_object_mut().expect("object");
    match kind {
        "identify" => {
            m.insert(
                "traits".into(),
                json!({"email": format!("{user}@example.com"), "name": "Ada Lovelace",
                       "firstName": "Ada", "lastName": "Lovelace", "phone": "+15551234567",
                       "plan": "pro"}),
            );
        }
        _ => {
            m.insert("event".into(), json!("Order Completed"));
            m.insert(
                "properties".into(),
                json!({"order_id": format!("order-{user}-{n}"), "revenue": 42.5, "value": 42.5, "total": 42.5,
                       "currency": "USD", "gclid": "gclid-1", "conversionDateTime": "2026-12-01 10:00:00+00:00",
                       "products": [{"product_id": "p-1", "sku": "SKU-1", "name": "Kettle",
                                     "price": 42.5, "quantity": 1}]}),
            );
        }
    }
    e
}

async fn explain(keel: &Keel, id: &str) -> Value {
    keel.admin_get(&format!("/admin/events/{id}")).await.1
}

/// Waits until every event in `ids` is in a final state at every vendor (`want` or a
/// skip), returning the last explain documents.
async fn settle(keel: &Keel, vendors: &[Running], ids: &[String], want: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut docs = Vec::new();
        for id in ids {
            docs.push(explain(keel, id).await);
        }
        let done = docs.iter().all(|d| {
            vendors.iter().all(|v| {
                let s = &d["destinations"][v.id()]["status"];
                s == want || s == "filtered"
            })
        });
        if done || Instant::now() > deadline {
            return docs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one family: the retry phase, then the refusal phase (see the module comment).
async fn family(vendors: Vec<Vendor>) {
    let db = TestDb::create().await;
    let mut running = Vec::new();
    for v in vendors {
        running.push(Running::start(v).await);
    }
    let mut opts = fast_router(KeelOptions::new(&db)).env("KEEL_ROUTER__MAX_ATTEMPTS", "1000");
    opts.workspace = json!({"sources": [{"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY,
        "enabled": true, "destinations": running.iter().map(Running::destination).collect::<Vec<_>>()}]});
    let keel = Keel::start(opts).await;

    let mut events = Vec::new();
    for user in ["ada", "grace", "alan"] {
        events.push(event("identify", user, 0));
        events.push(event("track", user, 1));
        events.push(event("track", user, 2));
    }
    send_batches(&keel, &events, events.len()).await;
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["messageId"].as_str().expect("id").to_owned())
        .collect();
    let docs = settle(&keel, &running, &ids, "delivered").await;
    for v in &running {
        let kind = v.vendor.kind;
        for (id, doc) in ids.iter().zip(&docs) {
            let s = &doc["destinations"][v.id()];
            let delivered = s["status"] == "delivered";
            let skipped = s["status"] == "filtered" && !id.contains("-track-");
            assert!(delivered || skipped, "{kind}: {id} is not delivered: {s}");
        }
        let got: Vec<Received> = v
            .sink
            .received()
            .into_iter()
            .filter(|r| !v.vendor.is_lookup(&r.target))
            .collect();
        let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
        assert_eq!(
            &statuses[..2],
            &[503, 429],
            "{kind}: the vendor was unavailable, then rate-limited: {statuses:?}"
        );
        assert!(
            statuses[2..].iter().all(|s| *s == 200),
            "{kind}: {statuses:?}"
        );
        // Requests already on their way when the 429 was answered arrive at once; every
        // request sent after it waits for the hint, whichever user it is for.
        let limited = got[1].at;
        let early: Vec<Duration> = got[2..]
            .iter()
            .map(|r| r.at.saturating_duration_since(limited))
            .filter(|w| *w > IN_FLIGHT && *w < v.vendor.limit.min_wait())
            .collect();
        assert!(
            early.is_empty(),
            "{kind}: requests came {early:?} after the 429, before its hint had passed"
        );
        assert!(
            got[2..]
                .iter()
                .any(|r| r.at.saturating_duration_since(limited) >= v.vendor.limit.min_wait()),
            "{kind}: no request waited for the 429's hint: {:?}",
            got.iter()
                .map(|r| (
                    r.status,
                    r.at.saturating_duration_since(limited),
                    r.target.clone()
                ))
                .collect::<Vec<_>>()
        );
        let text: String = got.iter().map(|r| r.body.to_string()).collect();
        assert!(
            text.contains("grace") || text.contains("Order Completed") || got.len() > 2,
            "{kind}: nothing of the events reached the vendor"
        );
    }

    // The vendors refuse: one more track is dead-lettered at each, with the vendor's words.
    for v in &running {
        *v.phase.lock().expect("phase") = Phase::Refusing;
    }
    let deliveries = |v: &Running| {
        v.sink
            .received()
            .iter()
            .filter(|r| !v.vendor.is_lookup(&r.target))
            .count()
    };
    let before: Vec<usize> = running.iter().map(deliveries).collect();
    let bad = event("track", "mallory", 3);
    send_batches(&keel, std::slice::from_ref(&bad), 1).await;
    let id = bad["messageId"].as_str().expect("id").to_owned();
    let doc = &settle(&keel, &running, std::slice::from_ref(&id), "dead_lettered").await[0];
    for (v, before) in running.iter().zip(before) {
        let kind = v.vendor.kind;
        let s = &doc["destinations"][v.id()];
        assert_eq!(s["status"], "dead_lettered", "{kind}: {s}");
        let reason = s["reason"].as_str().unwrap_or_default().to_owned()
            + s["last_response"].as_str().unwrap_or_default();
        assert!(
            reason.contains(v.vendor.text),
            "{kind}: the DLQ reason lacks the vendor's text {:?}: {s}",
            v.vendor.text
        );
        assert_eq!(deliveries(v) - before, 1, "{kind}: a 4xx is not retried");
    }
}

#[tokio::test]
async fn analytics_destinations_retry_honour_rate_limits_and_dead_letter_refusals() {
    family(vec![
        Vendor {
            kind: "AM",
            config: json!({"apiKey": "am-key", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"code":200,"events_ingested":1}"#,
            refusal: (400, r#"{"code":400,"error":"Invalid API key: am-key-rejected"}"#),
            text: "Invalid API key",
            lookups: &[],
        },
        Vendor {
            kind: "MP",
            config: json!({"token": "mp-token", "apiSecret": "mp-secret", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"code":200,"status":"OK","num_records_imported":1}"#,
            refusal: (401, r#"{"error":"Invalid credentials for project","status":0}"#),
            text: "Invalid credentials",
            lookups: &[],
        },
        Vendor {
            kind: "POSTHOG",
            config: json!({"teamApiKey": "phc_e2e_key", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"status":1}"#,
            refusal: (400, r#"{"type":"validation_error","code":"invalid_payload","detail":"Malformed request data: posthog refuses mallory"}"#),
            text: "posthog refuses mallory",
            lookups: &[],
        },
        Vendor {
            kind: "HEAP",
            config: json!({"appId": "1234567890", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: "",
            refusal: (400, "Bad Request: heap invalid app_id"),
            text: "heap invalid app_id",
            lookups: &[],
        },
        Vendor {
            kind: "PENDO",
            config: json!({"trackEventSecret": "pendo-track-secret", "integrationKey": "pendo-integration-key", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"total":1,"updated":1,"failed":0}"#,
            refusal: (400, r#"{"overall":"pendo: invalid integration key"}"#),
            text: "pendo: invalid integration key",
            lookups: &[],
        },
        Vendor {
            kind: "SEGMENT",
            config: json!({"writeKey": "wk_e2e_forward", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"success":true}"#,
            refusal: (400, r#"{"success":false,"message":"segment: bad request from mallory"}"#),
            text: "segment: bad request",
            lookups: &[],
        },
        Vendor {
            kind: "GA4",
            config: json!({"measurementId": "G-TEST1", "apiSecret": "ga-secret", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: "",
            refusal: (403, r#"{"error":{"message":"api_secret is not valid for this stream"}}"#),
            text: "api_secret is not valid",
            lookups: &[],
        },
    ])
    .await;
}

#[tokio::test]
async fn engagement_and_crm_destinations_retry_honour_rate_limits_and_dead_letter_refusals() {
    family(vec![
        Vendor {
            kind: "BRAZE",
            config: json!({"restApiKey": "braze-key", "dataCenter": "US-03", "apiBaseUrl": "{base}"}),
            limit: Limit::ResetAt,
            ok_body: r#"{"message":"success","attributes_processed":1,"events_processed":1}"#,
            refusal: (400, r#"{"message":"Invalid 'external_id' for user mallory","errors":[]}"#),
            text: "Invalid 'external_id'",
            lookups: &[],
        },
        Vendor {
            kind: "KLAVIYO",
            config: json!({"privateApiKey": "pk_klaviyo", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"data":{"type":"profile","id":"01H"}}"#,
            refusal: (400, r#"{"errors":[{"status":400,"code":"invalid","title":"Invalid input.","detail":"Klaviyo refuses profile mallory"}]}"#),
            text: "Klaviyo refuses profile",
            lookups: &[],
        },
        Vendor {
            kind: "ITERABLE",
            config: json!({"apiKey": "it-key", "dataCenter": "USDC", "apiBaseUrl": "{base}"}),
            limit: Limit::ResetIn,
            ok_body: r#"{"msg":"","code":"Success","successCount":1,"failCount":0}"#,
            refusal: (400, r#"{"msg":"Iterable: invalid email for mallory","code":"InvalidEmailAddressError"}"#),
            text: "Iterable: invalid email",
            lookups: &[],
        },
        Vendor {
            kind: "INTERCOM",
            // v1: no contact search before each request (v2 searches first; its cases cover that).
            config: json!({"apiKey": "ic-token-123", "apiVersion": "v1", "apiBaseUrl": "{base}"}),
            limit: Limit::ResetAt,
            ok_body: "",
            refusal: (400, r#"{"type":"error.list","request_id":"req1","errors":[{"code":"parameter_invalid","message":"intercom: event name is required"}]}"#),
            text: "intercom: event name is required",
            lookups: &[],
        },
        Vendor {
            kind: "MC",
            config: json!({"apiKey": "mc-key-123", "audienceId": "aud1", "datacenterId": "us21", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"id":"5aad","status":"subscribed","double_optin":false}"#,
            refusal: (400, r#"{"title":"Invalid Resource","status":400,"detail":"mailchimp could not validate mallory"}"#),
            text: "mailchimp could not validate",
            lookups: &[
                ("GET /3.0/lists/aud1/members/", 404, r#"{"status":404,"title":"Resource Not Found"}"#),
                ("GET /3.0/lists/aud1", 200, r#"{"id":"aud1","double_optin":false}"#),
            ],
        },
        Vendor {
            kind: "SENDGRID",
            config: json!({"apiKey": "SG.e2e-secret", "eventNamesSettings": [{"event": "Order Completed"}],
                           "mailFromTraits": true, "fromEmail": "shop@example.com", "templateId": "d-e2e",
                           "apiBaseUrl": "{base}"}),
            limit: Limit::ResetAt,
            ok_body: r#"{"job_id":"job-1"}"#,
            refusal: (400, r#"{"errors":[{"message":"sendgrid: the from email is not valid","field":"from.email"}]}"#),
            text: "sendgrid: the from email is not valid",
            lookups: &[],
        },
        Vendor {
            kind: "ZENDESK",
            config: json!({"domain": "acme", "email": "agent@acme.test", "apiToken": "zd-token-123",
                           "disableFieldCreation": true, "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"user":{"id":900,"name":"Ada Lovelace","email":"ada@example.com"}}"#,
            refusal: (422, r#"{"error":"RecordInvalid","description":"zendesk: record validation errors"}"#),
            text: "zendesk: record validation errors",
            lookups: &[("GET /api/v2/users/search.json", 200, r#"{"users":[{"id":900,"email":"ada@example.com"}],"count":1}"#)],
        },
        Vendor {
            kind: "ACTIVE_CAMPAIGN",
            config: json!({"apiUrl": "https://acme.api-us1.com", "apiKey": "ac-key-123", "actid": "1",
                           "eventKey": "ev-key-123", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"success":1,"message":"Event spawned"}"#,
            refusal: (422, r#"{"errors":[{"title":"activecampaign: contact email address is not valid"}]}"#),
            text: "activecampaign: contact email address is not valid",
            lookups: &[(
                "GET /api/3/eventTrackingEvents",
                200,
                r#"{"eventTrackingEvents":[{"name":"order completed"},{"name":"Order Completed"}],"meta":{"total":"2"}}"#,
            )],
        },
        Vendor {
            kind: "CUSTOMERIO",
            config: json!({"siteID": "cio-site", "apiKey": "cio-key", "datacenter": "US", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: "{}",
            refusal: (401, r#"{"meta":{"error":"Customer.io: unauthorized site id"}}"#),
            text: "Customer.io: unauthorized",
            lookups: &[],
        },
        Vendor {
            kind: "HS",
            config: json!({"authorizationType": "newPrivateAppApi", "accessToken": "hs-token",
                           "apiVersion": "newApi", "lookupField": "email", "apiBaseUrl": "{base}",
                           "hubID": "123",
                           "hubspotEvents": [{"rsEventName": "Order Completed",
                                              "hubspotEventName": "pe123_order_completed",
                                              "eventProperties": [{"from": "revenue", "to": "amount"}]}],
                           // Given, so the script asks the stand-in nothing but the deliveries.
                           "contactProperties": [{"name": "email", "type": "string", "hasUniqueValue": true},
                                                 {"name": "firstname", "type": "string"},
                                                 {"name": "lastname", "type": "string"},
                                                 {"name": "phone", "type": "string"}]}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"status":"COMPLETE","results":[{"id":"501","properties":{"email":"ada@example.com"}}]}"#,
            refusal: (400, r#"{"status":"error","message":"Property values were not valid: HubSpot rejects mallory","category":"VALIDATION_ERROR"}"#),
            text: "HubSpot rejects",
            lookups: &[],
        },
    ])
    .await;
}

#[tokio::test]
async fn chat_destinations_retry_honour_rate_limits_and_dead_letter_refusals() {
    family(vec![
        Vendor {
            kind: "SLACK",
            config: json!({"webhookUrl": "{base}/services/T000/B000/XXXX"}),
            limit: Limit::RetryAfter,
            ok_body: "ok",
            refusal: (404, "no_service: slack webhook revoked"),
            text: "no_service",
            lookups: &[],
        },
        Vendor {
            kind: "DISCORD",
            config: json!({"webhookUrl": "https://discord.com/api/webhooks/123/tok", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: "",
            refusal: (400, r#"{"code":50006,"message":"discord: cannot send an empty message"}"#),
            text: "discord: cannot send an empty message",
            lookups: &[],
        },
        Vendor {
            kind: "MSTEAMS",
            config: json!({"webhookUrl": "https://contoso.webhook.office.com/webhookb2/abc/IncomingWebhook/def/ghi",
                           "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: "1",
            refusal: (400, "teams: Summary or Text is required."),
            text: "teams: Summary or Text is required",
            lookups: &[],
        },
    ]).await;
}

#[tokio::test]
async fn ads_conversion_destinations_retry_honour_rate_limits_and_dead_letter_refusals() {
    family(vec![
        Vendor {
            kind: "FACEBOOK_CONVERSIONS",
            config: json!({"datasetId": "123456", "accessToken": "fb-token-123", "actionSource": "website", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"events_received":1,"messages":[],"fbtrace_id":"AbC"}"#,
            refusal: (400, r#"{"error":{"message":"Invalid parameter: meta refuses mallory","type":"OAuthException","code":100,"is_transient":false}}"#),
            text: "meta refuses mallory",
            lookups: &[],
        },
        Vendor {
            kind: "TIKTOK_ADS",
            config: json!({"accessToken": "tt-token-123", "pixelCode": "PIXEL123", "version": "v2",
                           "sendCustomEvents": true, "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"code":0,"message":"OK","request_id":"r1","data":{}}"#,
            refusal: (400, r#"{"code":40002,"message":"tiktok: invalid value for event_source_id"}"#),
            text: "tiktok: invalid value",
            lookups: &[],
        },
        Vendor {
            kind: "SNAPCHAT_CONVERSION",
            config: json!({"apiKey": "snap-token-123", "pixelId": "pixel-1", "apiVersion": "newApi",
                           "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"status":"SUCCESS","reason":"SUCCESS"}"#,
            refusal: (400, r#"{"status":"INVALID","reason":"snapchat: insufficient PII"}"#),
            text: "snapchat: insufficient PII",
            lookups: &[],
        },
        Vendor {
            kind: "GOOGLE_ADWORDS_ENHANCED_CONVERSIONS",
            config: json!({"customerId": "1234567890", "developerToken": "dev-token-123", "accessToken": "ya29.test-token",
                           "listOfConversions": [{"conversions": "Order Completed", "conversionActionId": "987654"}],
                           "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"results":[{"adjustmentType":"ENHANCEMENT"}]}"#,
            refusal: (400, r#"{"error":{"code":400,"message":"google ads: invalid customer id","status":"INVALID_ARGUMENT"}}"#),
            text: "google ads: invalid customer id",
            lookups: &[],
        },
    ])
    .await;
}

#[tokio::test]
async fn mobile_destinations_retry_honour_rate_limits_and_dead_letter_refusals() {
    family(vec![
        Vendor {
            kind: "ADJ",
            config: json!({"appToken": "app-tok-1", "environment": false,
                           "customMappings": [{"from": "Order Completed", "to": "abc123"}], "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"status":"OK"}"#,
            refusal: (400, r#"{"error":"Event request failed (adjust: invalid app token)"}"#),
            text: "adjust: invalid app token",
            lookups: &[],
        },
        Vendor {
            kind: "AF",
            config: json!({"devKey": "dev-key-secret-1", "androidAppId": "com.example.app", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: "ok",
            refusal: (400, "Bad request: appsflyer invalid JSON"),
            text: "appsflyer invalid JSON",
            lookups: &[],
        },
        Vendor {
            kind: "CLEVERTAP",
            config: json!({"accountId": "ACC-1", "passcode": "pass-secret-1", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"status":"success","processed":1,"unprocessed":[]}"#,
            refusal: (401, r#"{"status":"fail","error":"clevertap: account id not valid","code":401}"#),
            text: "clevertap: account id not valid",
            lookups: &[],
        },
        Vendor {
            kind: "MOENGAGE",
            config: json!({"apiId": "WS123", "apiKey": "key-secret-1", "region": "US", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"status":"success","message":"Your request has been accepted"}"#,
            refusal: (400, r#"{"status":"fail","error":{"message":"moengage: missing customer_id","type":"Bad Request"}}"#),
            text: "moengage: missing customer_id",
            lookups: &[],
        },
        Vendor {
            kind: "ONE_SIGNAL",
            config: json!({"appId": "app-1", "apiBaseUrl": "{base}"}),
            limit: Limit::RetryAfter,
            ok_body: r#"{"success":true}"#,
            refusal: (400, r#"{"errors":["onesignal: invalid app_id format"]}"#),
            text: "onesignal: invalid app_id format",
            lookups: &[],
        },
    ])
    .await;
}

#[tokio::test]
async fn cloud_messaging_destinations_retry_honour_rate_limits_and_dead_letter_refusals() {
    family(vec![Vendor {
        kind: "GOOGLEPUBSUB",
        config: json!({"projectId": "p1", "apiBaseUrl": "{base}",
                       "eventToTopicMap": [{"from": "*", "to": "events"}]}),
        limit: Limit::RetryAfter,
        ok_body: r#"{"messageIds":["2070443601311540"]}"#,
        refusal: (404, r#"{"error":{"code":404,"message":"pubsub: resource not found (resource=events)","status":"NOT_FOUND"}}"#),
        text: "pubsub: resource not found",
        lookups: &[],
    }])
    .await;
}
