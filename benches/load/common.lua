-- Shared by the load scripts: a token, a purpose, and subject ids read from ids.txt.
local M = {}

function M.setup(env_token, purpose)
  local token = os.getenv(env_token)
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["X-Purpose"] = purpose
  wrk.headers["Content-Type"] = "application/json"
end

function M.load_ids()
  local ids = {}
  local f = io.open(os.getenv("PIIVAULT_BENCH_IDS"), "r")
  for line in f:lines() do ids[#ids + 1] = line end
  f:close()
  return ids
end

-- A valid mainland resident ID number (GB 11643 check digit) for sequence n.
function M.id_number(n)
  local body = string.format("110105%s%03d", os.date("!%Y%m%d", 315532800 + (n % 10000) * 86400), n % 1000)
  local w = {7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}
  local sum = 0
  for i = 1, 17 do sum = sum + tonumber(body:sub(i, i)) * w[i] end
  local check = ("10X98765432"):sub(sum % 11 + 1, sum % 11 + 1)
  return body .. check
end

return M
