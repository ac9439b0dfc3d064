module filterrelease.dev/filters

go 1.26.0
