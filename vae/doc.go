package vae
