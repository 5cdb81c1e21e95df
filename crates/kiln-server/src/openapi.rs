//! `GET /openapi.json`: an OpenAPI 3.0 description of the server's API.
//!
//! Written by hand as JSON rather than derived with utoipa: the request types are shaped for
//! serde (untagged unions, flattened shared fields) and utoipa would need a parallel set of
//! annotations on every field anyway, plus a proc-macro crate in the build. The description is
//! kept honest by the test suite: schemathesis generates requests from it and checks that none
//! gets a 5xx, and the Rust tests check that every route the router serves is described.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    })
}

fn json_body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn ok_json(schema: &str) -> Value {
    json!({
        "description": "OK",
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

/// Responses every generation endpoint may give.
fn generation_responses(schema: &str) -> Value {
    json!({
        "200": {
            "description": "The completion, or with `stream` an event stream of chunks ending with `data: [DONE]`",
            "content": {
                "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}},
                "text/event-stream": {"schema": {"type": "string"}}
            }
        },
        "400": error_response("Invalid parameter, or the prompt does not fit the context"),
        "404": error_response("Unknown model"),
        "413": error_response("Request body too large"),
        "429": error_response("The waiting queue is full; see Retry-After"),
        "503": error_response("The server is shutting down")
    })
}

fn sampling_properties() -> Value {
    json!({
        "model": {"type": "string", "nullable": true},
        "max_tokens": {"type": "integer", "minimum": 1, "nullable": true},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": true},
        "top_p": {"type": "number", "exclusiveMinimum": true, "minimum": 0, "maximum": 1, "nullable": true},
        "top_k": {"type": "integer", "minimum": -1, "nullable": true},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1, "nullable": true},
        "seed": {"type": "integer", "nullable": true},
        "n": {"type": "integer", "minimum": 1, "maximum": 64, "nullable": true},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2, "nullable": true},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2, "nullable": true},
        "repetition_penalty": {"type": "number", "exclusiveMinimum": true, "minimum": 0, "maximum": 10, "nullable": true},
        "stop": {
            "nullable": true,
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "maxItems": 16, "items": {"type": "string", "minLength": 1}}
            ]
        },
        "stream": {"type": "boolean", "nullable": true},
        "stream_options": {
            "type": "object", "nullable": true,
            "properties": {"include_usage": {"type": "boolean", "nullable": true}}
        },
        "ignore_eos": {"type": "boolean", "nullable": true},
        // Accepted and not acted on, as OpenAI itself only logs it.
        "user": {"type": "string", "nullable": true}
    })
}

/// The top-level fields a request schema (`CompletionRequest`, `ChatCompletionRequest`)
/// declares: the routes refuse any other with a 400 naming it, so this document and the
/// server's behaviour are one list.
/// Built once per process: the routes ask on every request.
pub fn request_fields(schema: &str) -> &'static [String] {
    static COMPLETION: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    static CHAT: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let cell = match schema {
        "CompletionRequest" => &COMPLETION,
        "ChatCompletionRequest" => &CHAT,
        _ => return &[],
    };
    cell.get_or_init(|| {
        schemas()[schema]["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

fn usage_schema() -> Value {
    json!({
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"}
        }
    })
}

fn message_schema() -> Value {
    json!({
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant"]},
            "content": {
                "nullable": true,
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {
                        "type": "object", "required": ["type", "text"],
                        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}
                    }}
                ]
            }
        }
    })
}

fn schemas() -> Value {
    let completion_request = json!({
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": false,
        "properties": with(sampling_properties(), json!({
            "prompt": {"oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}, "minItems": 1}
            ]},
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 20, "nullable": true},
            "echo": {"type": "boolean", "nullable": true}
        }))
    });
    let chat_request = json!({
        "type": "object",
        "required": ["messages"],
        "additionalProperties": false,
        "properties": with(sampling_properties(), json!({
            "messages": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/ChatMessage"}},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "nullable": true},
            "logprobs": {"type": "boolean", "nullable": true},
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20, "nullable": true}
        }))
    });
    json!({
        "ErrorResponse": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": true},
                    "code": {"type": "string", "nullable": true}
                }
            }}
        },
        "Usage": usage_schema(),
        "ChatMessage": message_schema(),
        "CompletionRequest": completion_request,
        "ChatCompletionRequest": chat_request,
        "CompletionResponse": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["text_completion"]},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {
                    "type": "object",
                    "required": ["index", "text", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "text": {"type": "string"},
                        "logprobs": {"type": "object", "nullable": true},
                        "finish_reason": {"type": "string", "nullable": true, "enum": ["stop", "length", null]}
                    }
                }},
                "usage": {"$ref": "#/components/schemas/Usage"}
            }
        },
        "ChatCompletionResponse": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["chat.completion"]},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {"type": "object", "required": ["role", "content"], "properties": {
                            "role": {"type": "string"}, "content": {"type": "string"}
                        }},
                        "logprobs": {"type": "object", "nullable": true},
                        "finish_reason": {"type": "string", "nullable": true}
                    }
                }},
                "usage": {"$ref": "#/components/schemas/Usage"}
            }
        },
        "EmbeddingRequest": {
            "type": "object",
            "required": ["input"],
            "properties": {
                "model": {"type": "string", "nullable": true},
                "input": {"oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
                ]},
                "encoding_format": {"type": "string", "enum": ["float", "base64"], "nullable": true},
                "dimensions": {"type": "integer", "nullable": true}
            }
        },
        "EmbeddingResponse": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"type": "string"},
                "data": {"type": "array", "items": {"type": "object"}},
                "model": {"type": "string"},
                "usage": {"type": "object"}
            }
        },
        "TokenizeRequest": {
            "type": "object",
            "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
            "properties": {
                "model": {"type": "string", "nullable": true},
                "prompt": {"type": "string"},
                "messages": {"type": "array", "items": {"$ref": "#/components/schemas/ChatMessage"}},
                "add_special_tokens": {"type": "boolean", "nullable": true},
                "add_generation_prompt": {"type": "boolean", "nullable": true}
            }
        },
        "TokenizeResponse": {
            "type": "object",
            "required": ["count", "max_model_len", "tokens"],
            "properties": {
                "count": {"type": "integer"},
                "max_model_len": {"type": "integer"},
                "tokens": {"type": "array", "items": {"type": "integer"}}
            }
        },
        "DetokenizeRequest": {
            "type": "object",
            "required": ["tokens"],
            "properties": {
                "model": {"type": "string", "nullable": true},
                "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}
            }
        },
        "DetokenizeResponse": {
            "type": "object",
            "required": ["prompt"],
            "properties": {"prompt": {"type": "string"}}
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"type": "string"},
                "data": {"type": "array", "items": {"type": "object", "required": ["id", "object"], "properties": {
                    "id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
                    "owned_by": {"type": "string"}, "max_model_len": {"type": "integer"}
                }}}
            }
        }
    })
}

/// The paths this server answers, as `(method, path)`; the router test checks both agree.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/completions"),
    ("post", "/v1/chat/completions"),
    ("post", "/v1/embeddings"),
    ("get", "/v1/models"),
    ("get", "/health"),
    ("post", "/tokenize"),
    ("post", "/detokenize"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The whole document.
pub fn document(model_name: &str) -> Value {
    let plain = |description: &str, content: &str| json!({"200": {"description": description, "content": {content: {"schema": {"type": "string"}}}}});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "kiln OpenAI-compatible API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("Serving `{model_name}`.")
        },
        "paths": {
            "/v1/completions": {"post": {
                "operationId": "createCompletion",
                "requestBody": json_body("CompletionRequest"),
                "responses": generation_responses("CompletionResponse")
            }},
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "requestBody": json_body("ChatCompletionRequest"),
                "responses": generation_responses("ChatCompletionResponse")
            }},
            "/v1/embeddings": {"post": {
                "operationId": "createEmbedding",
                "requestBody": json_body("EmbeddingRequest"),
                "responses": {
                    "200": ok_json("EmbeddingResponse"),
                    "400": error_response("Invalid input, or the model is not an encoder"),
                    "404": error_response("Unknown model"),
                    "413": error_response("Request body too large")
                }
            }},
            "/v1/models": {"get": {"operationId": "listModels", "responses": {"200": ok_json("ModelList")}}},
            "/health": {"get": {"operationId": "health", "responses": {
                "200": {"description": "Serving"},
                "503": error_response("Shutting down")
            }}},
            "/tokenize": {"post": {
                "operationId": "tokenize",
                "requestBody": json_body("TokenizeRequest"),
                "responses": {
                    "200": ok_json("TokenizeResponse"),
                    "400": error_response("Invalid request"),
                    "404": error_response("Unknown model")
                }
            }},
            "/detokenize": {"post": {
                "operationId": "detokenize",
                "requestBody": json_body("DetokenizeRequest"),
                "responses": {
                    "200": ok_json("DetokenizeResponse"),
                    "400": error_response("Token id outside the vocabulary"),
                    "404": error_response("Unknown model")
                }
            }},
            "/metrics": {"get": {"operationId": "metrics", "responses": plain("Prometheus text exposition format", "text/plain")}},
            "/openapi.json": {"get": {"operationId": "openapi", "responses": {"200": {"description": "This document"}}}}
        },
        "components": {"schemas": schemas()}
    })
}
