// Package models holds the project's embedded default model.
package models
