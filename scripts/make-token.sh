#!/usr/bin/env bash
# Makes a random bearer token for a tenant and prints the line for
# tlserve's --auth_tokens_file (which holds only the token's sha256).
#
#   scripts/make-token.sh TENANT user|admin [TOKEN_FILE]
#
# The token goes to TOKEN_FILE (mode 600) when given, else to stdout; give
# it to the tenant (tlctl --token_file, TLSERVE_TOKEN, the Python client's
# token=) or to workers (tlworker --token_file) for an admin token.
set -euo pipefail
if [ $# -lt 2 ] || { [ "$2" != user ] && [ "$2" != admin ]; }; then
  echo "usage: $0 TENANT user|admin [TOKEN_FILE]" >&2
  exit 2
fi
token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
hash="$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
if [ $# -ge 3 ]; then
  (umask 077 && printf '%s\n' "$token" > "$3")
  echo "token written to $3" >&2
else
  echo "token: $token" >&2
fi
echo "$1 $2 $hash"
