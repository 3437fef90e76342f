-- wrk script: POST the same body to /api/logs on every request.
-- usage: wrk ... -s benches/api/post.lua <url>/api/logs -- <body file> <content type> [token]
local req

function init(args)
   local path, ctype, token = args[1], args[2], args[3]
   local f = assert(io.open(path, "rb"), "cannot open body file " .. tostring(path))
   local body = f:read("*a")
   f:close()
   local headers = { ["Content-Type"] = ctype }
   if token and token ~= "" then
      headers["Authorization"] = "Bearer " .. token
   end
   req = wrk.format("POST", nil, headers, body)
end

function request()
   return req
end
