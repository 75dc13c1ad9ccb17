-- wrk script of docker/smoke.sh: POST a v2 infer of the `cnn` demo model (a 28x28 zero image) and
-- count answers other than 200 per second of the run, so the smoke can tell failures right at a
-- replica's death from failures after the load balancer marked it down. wrk's own summary counts
-- socket errors (connect, read, write, timeout), which never reach response().
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local zeros = {}
for i = 1, 784 do zeros[i] = "0" end
wrk.body = '{"inputs":[{"name":"image","datatype":"FP32","shape":[1,1,28,28],"data":['
    .. table.concat(zeros, ",") .. ']}]}'

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    bad = {}
end

function response(status, headers, body)
    if status ~= 200 then
        local second = os.time()
        bad[second] = (bad[second] or 0) + 1
    end
end

function done(summary, latency, requests)
    local merged = {}
    for _, thread in ipairs(threads) do
        for second, count in pairs(thread:get("bad")) do
            merged[second] = (merged[second] or 0) + count
        end
    end
    for second, count in pairs(merged) do
        io.write(string.format("non200_at=%d count=%d\n", second, count))
    end
    local e = summary.errors
    io.write(string.format("wrk_requests=%d wrk_non2xx=%d wrk_socket_errors=%d\n", summary.requests,
        e.status, e.connect + e.read + e.write + e.timeout))
end
