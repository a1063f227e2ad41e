package textenc
