# shellcheck shell=bash
# Helpers sourced by the launch scripts: print-or-run with DRY_RUN=1, and shell quoting for printed and
# remote commands.

DRY_RUN="${DRY_RUN:-0}"

# quote ARG...: the arguments as one shell-safe string (plain words as they are, others single-quoted),
# e.g. for a remote --command= or a printed command line that `bash -c` / Python's shlex.split read back.
quote() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="${out:+ }$arg"
    else
      out+="${out:+ }'${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '%s' "$out"
}

# run CMD ARG...: runs the command, or with DRY_RUN=1 prints it as "+ CMD ARG..." (quoted) instead.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+ %s\n' "$(quote "$@")"
  else
    "$@"
  fi
}

# need NAME...: fails with a message naming the first unset environment variable.
need() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "error: set $name (see the comment at the top of $0)" >&2
      exit 2
    fi
  done
}
