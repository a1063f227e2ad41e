package rng
