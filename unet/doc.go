package unet
