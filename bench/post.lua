-- wrk script: POST one prepared body. Args after `--`: body file, content type, [inference header length].
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2]
  if args[3] then
    wrk.headers["Inference-Header-Content-Length"] = args[3]
  end
end
