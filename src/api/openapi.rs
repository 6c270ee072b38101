//! `GET /openapi.json`: the OpenAPI 3 description of every endpoint. Written by hand
//! (no code generator, one less proc-macro crate to build); the test
//! `openapi_document_lists_every_route_and_every_route_is_served` keeps it in step with [`super::configure`].

use actix_web::HttpResponse;
use serde_json::{json, Value};

/// Every `(path, method)` the API serves; the OpenAPI test walks this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("/reports", "post"),
    ("/reports", "get"),
    ("/reports/{id}", "get"),
    ("/reports/{id}/file", "get"),
    ("/reports/{id}/retry", "post"),
    ("/dlq", "get"),
    ("/dlq/redrive", "post"),
    ("/dlq/{messageId}", "delete"),
    ("/generate", "get"),
    ("/health", "get"),
    ("/health/live", "get"),
    ("/health/ready", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
];

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document.
pub fn spec() -> Value {
    let id_param = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "reportd", "version": env!("CARGO_PKG_VERSION"), "description": "Submit report jobs, poll their status, fetch the result."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string", "nullable": true}}}}},
                "ReportRequest": {"type": "object", "additionalProperties": false, "required": ["userId", "startDate", "endDate"], "properties": {
                    "userId": {"type": "integer", "minimum": 1},
                    "startDate": {"type": "string", "description": "ISO-8601 date or date-time"},
                    "endDate": {"type": "string", "description": "ISO-8601 date or date-time; a date means the end of that day"}}},
                "Accepted": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}, "status": {"type": "string"}, "links": {"type": "object"}}},
                "Report": {"type": "object", "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": ["in-queue", "in-progress", "completed", "failed"]},
                    "payload": {"$ref": "#/components/schemas/ReportRequest"},
                    "reportUrl": {"type": "string", "nullable": true},
                    "attempts": {"type": "integer"},
                    "failures": {"type": "integer"},
                    "lastError": {"type": "string", "nullable": true},
                    "createdAt": {"type": "string", "format": "date-time"},
                    "startedAt": {"type": "string", "format": "date-time", "nullable": true},
                    "finishedAt": {"type": "string", "format": "date-time", "nullable": true},
                    "enqueuedAt": {"type": "string", "format": "date-time", "nullable": true}}},
                "DlqPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
                    "messageId": {"type": "string"}, "reportId": {"type": "string", "nullable": true}, "reportStatus": {"type": "string", "nullable": true},
                    "attempts": {"type": "integer", "nullable": true}, "lastError": {"type": "string", "nullable": true},
                    "poisonReason": {"type": "string", "nullable": true}, "sentAt": {"type": "string", "format": "date-time", "nullable": true}, "body": {"type": "string"}}}}}},
                "ReportPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Report"}}, "nextCursor": {"type": "string", "nullable": true}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/reports": {
                "post": {
                    "summary": "Submit a report job",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReportRequest"}}}},
                    "responses": {
                        "202": {"description": "Accepted", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                        "200": {"description": "Same Idempotency-Key and body as an earlier request: that report", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                        "400": error_response("Malformed JSON or a rule broken"),
                        "401": error_response("Missing or wrong bearer token"),
                        "409": error_response("Idempotency-Key reused with another body"),
                        "413": error_response("Body too large"),
                        "415": error_response("Content-Type is not JSON")
                    }
                },
                "get": {
                    "summary": "List reports, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["in-queue", "in-progress", "completed", "failed"]}},
                        {"name": "userId", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReportPage"}}}}, "400": error_response("Bad parameter")}
                }
            },
            "/reports/{id}": {"get": {"summary": "One report", "parameters": [id_param.clone()], "responses": {
                "200": {"description": "The report", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Report"}}}},
                "400": error_response("Not a UUID"), "404": error_response("Unknown id")}}},
            "/reports/{id}/file": {"get": {"summary": "The generated CSV", "parameters": [id_param], "responses": {
                "200": {"description": "CSV", "content": {"text/csv": {}}}, "404": error_response("Unknown or not completed")}}},
            "/reports/{id}/retry": {"post": {"summary": "Send a report a new message: a failed one (back to in-queue, failures forgotten), or a stranded one (in-queue or in-progress, untouched for 3 visibility timeouts + 30 s)", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}], "responses": {
                "202": {"description": "A new message is on its way; status is the report's status after the reset", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                "404": error_response("Unknown id"), "409": error_response("not_retryable: the report is completed, or in-queue/in-progress and alive")}}},
            "/dlq": {"get": {"summary": "Messages in the dead-letter queue, with their reports (not consumed)", "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
                "responses": {"200": {"description": "DLQ messages", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DlqPage"}}}}, "400": error_response("Bad parameter")}}},
            "/dlq/redrive": {"post": {"summary": "Send failed reports in the DLQ back to the main queue (reset, new message, then the DLQ copy is deleted)", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "properties": {
                "ids": {"type": "array", "items": {"type": "string"}, "description": "report ids or message ids; poison messages only by id"},
                "all": {"type": "boolean", "description": "every message that has a report row"}}}}}},
                "responses": {"200": {"description": "What moved (moved, skippedPoison, skipped: messages of reports that are not failed, notFound)", "content": {"application/json": {"schema": {"type": "object"}}}}, "400": error_response("Bad body")}}},
            "/dlq/{messageId}": {"delete": {"summary": "Discard one DLQ message", "parameters": [{"name": "messageId", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"204": {"description": "Discarded"}, "404": error_response("Not in the DLQ")}}},
            "/generate": {"get": {"summary": "Demo: enqueue a report for a random user, now..now", "responses": {"202": {"description": "Accepted", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}}}}},
            "/health": {"get": {"summary": "Actors and dependencies", "security": [], "responses": {"200": {"description": "Healthy"}, "503": {"description": "Unhealthy"}}}},
            "/health/live": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "Alive"}, "503": {"description": "Poller stalled or an actor stuck"}}}},
            "/health/ready": {"get": {"summary": "Readiness", "security": [], "responses": {"200": {"description": "Ready"}, "503": {"description": "Database or SQS unreachable"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format)", "security": [], "responses": {"200": {"description": "Metrics", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3"}}}}
        }
    })
}

/// `GET /openapi.json`.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(spec())
}
