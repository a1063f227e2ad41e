# shellcheck shell=bash
# lib.sh holds what the scripts of this folder share; image.sh, slurm.sh
# and services.sh source it (setup.sh stands alone: the image copies it
# by itself).

# say writes its words on stderr after the script's name.
say() { echo "${0##*/}: $*" >&2; }

# die says its words and exits 1.
die() {
	say "$*"
	exit 1
}

# aptinstall WHAT PKG... installs the Debian packages PKG with apt-get, as
# root or with sudo -n, saying that it installs WHAT.
aptinstall() {
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo -n"
	say "installing $1 with apt-get"
	shift
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
