// Package server is an HTTP image service on sd models: it serves a loaded
// model to many clients, whose concurrent requests the engine batches
// dynamically, or a folder of models loaded on demand and chosen per
// request (Models, models.go).
//
// It speaks several API dialects, one file each: the AUTOMATIC1111 subset
// (POST /sdapi/v1/txt2img, img2img, GET progress, POST interrupt, GET
// samplers; a1111.go), SageMaker's (POST /invocations, GET /ping;
// sagemaker.go), OpenAI's POST /v1/images/generations (openai.go) and an
// async job API (POST /v1/jobs, GET /v1/jobs/{id}, GET /v1/jobs/{id}/result,
// DELETE /v1/jobs/{id}; jobs.go), with GET /healthz, GET /metrics
// (Prometheus; metrics.go) and a web page on / (web.go).
//
// Every generation is admitted into a bounded queue first (past it, 429
// with Retry-After); the request's context is the Submit context, so a
// client that disconnects cancels its work. The fast/quality switch snaps
// steps to two values so that requests fall into two groups the engine
// batches.
//
//	srv := server.New(model, server.Config{Token: token})
//	err := srv.Serve(ctx, ln) // until ctx ends, then a graceful shutdown
//
// Handler returns the bare http.Handler for tests (net/http/httptest) or
// for mounting under another server.
package server
