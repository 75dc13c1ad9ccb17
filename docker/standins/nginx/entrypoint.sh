#!/bin/sh
# Start-up of the nginx stand-in (docker/standins/nginx/Dockerfile): what the official image's
# 20-envsubst-on-templates.sh does, then a DNS watch that replaces nginx >= 1.27.3's `server ... resolve`.
set -eu

# Only the variables the filter names are substituted, so nginx's own $host, $request_id... stay.
filter="${NGINX_ENVSUBST_FILTER:-}"
vars="$(env | cut -d= -f1 | grep -E -- "${filter:-.}" | sed 's/^/$/' | tr '\n' ' ')"
mkdir -p /etc/nginx/conf.d
for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    out="/etc/nginx/conf.d/$(basename "$template" .template)"
    envsubst "$vars" <"$template" >"$out"
    # nginx 1.22 has no `resolve` server parameter: nginx resolves the name at each (re)load instead.
    sed -i -E 's/^([[:space:]]*server[[:space:]]+[^[:space:];]+)[[:space:]]+resolve\b/\1/' "$out"
done

# Names of upstream servers that are not IP addresses: their A records, watched every second.
names="$(sed -n -E 's/^[[:space:]]*server[[:space:]]+([A-Za-z][A-Za-z0-9_.-]*)(:[0-9]+)?[[:space:];].*/\1/p' \
    /etc/nginx/conf.d/*.conf 2>/dev/null | sort -u)"
answer() {
    for name in $names; do getent ahostsv4 "$name" | awk '{print $1}' | sort -u; done | tr '\n' ' '
}
if [ -n "$names" ]; then
    (
        last="$(answer)"
        while sleep 1; do
            now="$(answer)"
            # An empty answer (every replica down at once) keeps the last configuration: nginx cannot
            # load an upstream whose name does not resolve.
            if [ -n "$now" ] && [ "$now" != "$last" ]; then
                echo "deepserve-lb: $names -> $now; reloading nginx" >&2
                nginx -s reload || true
                last="$now"
            fi
        done
    ) &
fi
exec "$@"
