package modelgen
