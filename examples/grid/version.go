package main

import "runtime/debug"

// libraryVersion names the sdpipe code that made an image: the module
// version when sdpipe is a dependency, else the main module's version and
// VCS revision ("(devel)+rev=1a2b3c4d5e6f+dirty" for a build from a git
// checkout), plus the Go version.
func libraryVersion() string {
	const module = "github.com/sdpipe/sdpipe"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "sdpipe unknown"
	}
	v := ""
	if bi.Main.Path == module {
		v = bi.Main.Version
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if rev != "" {
			v += "+rev=" + rev[:min(12, len(rev))] + dirty
		}
	}
	for _, d := range bi.Deps {
		if d.Path == module {
			v = d.Version
			if d.Replace != nil {
				v += "=>" + d.Replace.Path + "@" + d.Replace.Version
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return "sdpipe " + v + " " + bi.GoVersion
}
