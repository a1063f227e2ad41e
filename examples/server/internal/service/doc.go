// Package service is the HTTP image service of examples/server: it serves
// one loaded sd.Model to many clients through the APIs they already speak
// (the AUTOMATIC1111 subset, a SageMaker-style JSON body, OpenAI's image
// generations, and an async job API), a Prometheus /metrics endpoint, and
// an embedded web page.
//
// Every generation is admitted into a bounded queue first: past it, the
// client gets 429 with Retry-After. The request's context is the Submit
// context, so a client that disconnects cancels its work. Concurrent
// requests are batched by the engine (sd.WithBatching); the fast/quality
// switch snaps steps to two values so that requests fall into two groups
// the engine can batch together.
package service
